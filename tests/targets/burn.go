// A Go target for the sampler: CPU burnt in main.burnGo, called from main.spinGo, for 8 s.
// Go writes no .eh_frame: unwinding needs its (compressed) .debug_frame.
package main

import (
	"fmt"
	"os"
	"time"
)

//go:noinline
func burnGo(n uint64) uint64 {
	x := n | 1
	for i := uint64(0); i < 20000; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		x += i
	}
	return x
}

//go:noinline
func spinGo(d time.Duration) uint64 {
	end := time.Now().Add(d)
	var acc uint64
	for time.Now().Before(end) {
		acc += burnGo(acc)
	}
	return acc
}

func main() {
	fmt.Println("ready")
	fmt.Fprintln(os.Stderr, spinGo(8*time.Second))
}
