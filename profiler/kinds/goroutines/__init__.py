"""`goprof goroutines`: every goroutine of a running Go program, read from its memory."""
