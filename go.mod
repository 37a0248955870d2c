module github.com/leveehq/levee

go 1.26.0
