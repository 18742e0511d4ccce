package enforcer

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel splice ../../bpf/splice.c -- -I../../bpf
