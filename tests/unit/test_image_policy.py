"""Which images `spec.image` may name: a repository allows its tags and digests only, a prefix
ending in / allows the repositories below it; nothing else matches."""

from __future__ import annotations

import pytest

from radps_operator import image_policy
from radps_operator.settings import OperatorSettings

ALLOWED = ("radps", "ghcr.io/org/radps", "registry.example.org:5000/team/")


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("radps", True),
        ("radps:0.1.0", True),
        ("radps@sha256:0123abcd", True),
        ("ghcr.io/org/radps:2", True),
        ("registry.example.org:5000/team/radps:1", True),
        ("registry.example.org:5000/team/sub/radps@sha256:00", True),
        ("radps-evil:1", False),  # another repository with the same start
        ("radps/evil:1", False),  # docker.io/radps/evil, not docker.io/library/radps
        ("docker.io/library/radps:1", False),  # compared as written
        ("ghcr.io/org/radpsx:1", False),
        ("ghcr.io/org/radps/evil:1", False),
        ("registry.example.org:5000/team/", False),  # the prefix itself names no repository
        ("registry.example.org:5000/teamx/radps:1", False),
        ("attacker.invalid/evil:1", False),
    ],
)
def test_matching(image, allowed):
    assert image_policy.allows(ALLOWED, image) is allowed


def test_the_list_comes_from_the_environment_and_defaults_to_radps():
    assert image_policy.from_env({}) == ("radps",)
    assert image_policy.from_env({"RADPS_ALLOWED_IMAGES": " , "}) == ("radps",)
    raw = "ghcr.io/org/radps, radps,ghcr.io/org/radps"
    assert image_policy.from_env({"RADPS_ALLOWED_IMAGES": raw}) == ("ghcr.io/org/radps", "radps")
    settings = OperatorSettings.from_env({"RADPS_ALLOWED_IMAGES": "a/, b"})
    assert settings.allowed_images == ("a/", "b")
