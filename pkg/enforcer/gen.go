package enforcer

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type event -type counter_key -type counter_val -type orig -type orig_key -type allow_key -type allow_val -type sandbox_cfg -type allow_flag -type sandbox_flag sluice ../../bpf/sluice.c -- -I../../bpf
