package http

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type http_event -type http_kind -type http_str -type dur_key -type dur_val -type server_slot http http.bpf.c -- -I../../../../bpf/headers
