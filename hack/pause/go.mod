module radps.local/pause

go 1.26
