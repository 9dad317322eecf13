package exec

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type exec_event -type exit_event -type event_kind exec exec.bpf.c -- -I../../../bpf/headers
