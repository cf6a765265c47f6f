import sys

from radps_operator.cli import main

sys.exit(main())
