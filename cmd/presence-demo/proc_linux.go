package main

import "syscall"

// childAttr makes the kernel stop a child when the demo dies, even by SIGKILL,
// so no process of the topology outlives it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
