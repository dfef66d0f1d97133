module github.com/raksha-backup/raksha

go 1.26.0

require golang.org/x/sys v0.49.0

require (
	github.com/klauspost/compress v1.18.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
)
