package tcp

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type tcp_event -type tcp_direction tcp tcp.bpf.c -- -I../../../bpf/headers
