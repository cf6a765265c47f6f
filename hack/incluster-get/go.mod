module radps.local/incluster-get

go 1.26
