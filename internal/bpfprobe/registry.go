package bpfprobe

import (
	"slices"
	"sync"
)

// The loaded families, for the agent's health metrics.
var (
	mu       sync.Mutex
	families []*Family
)

func register(f *Family) {
	mu.Lock()
	defer mu.Unlock()
	families = append(families, f)
}

func unregister(f *Family) {
	mu.Lock()
	defer mu.Unlock()
	families = slices.DeleteFunc(families, func(x *Family) bool { return x == f })
}

// Families returns the probe families loaded now.
func Families() []*Family {
	mu.Lock()
	defer mu.Unlock()
	return slices.Clone(families)
}
