// tcppeer is one side of a TCP exchange for zerotel's tests: the client sends
// N bytes and reads M; the server reads N and sends M; both then close. Each
// prints its local and peer address as "local=ADDR peer=ADDR" once connected.
//
//	tcppeer server LISTEN_ADDR N M   (prints "listen=ADDR" first)
//	tcppeer client SERVER_ADDR N M
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: tcppeer server|client ADDR N M")
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Args[3])
	m, _ := strconv.Atoi(os.Args[4])
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2], n, m)
	case "client":
		err = client(os.Args[2], n, m)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcppeer:", err)
		os.Exit(1)
	}
}

func server(addr string, n, m int) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("listen=%s\n", ln.Addr())
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	ln.Close()
	fmt.Printf("local=%s peer=%s\n", c.LocalAddr(), c.RemoteAddr())
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		return err
	}
	if _, err := c.Write(make([]byte, m)); err != nil {
		return err
	}
	return c.Close()
}

func client(addr string, n, m int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Printf("local=%s peer=%s\n", c.LocalAddr(), c.RemoteAddr())
	if _, err := c.Write(make([]byte, n)); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, make([]byte, m)); err != nil {
		return err
	}
	// Wait for the server's close so both sides end the same way every run.
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		return fmt.Errorf("want EOF after %d bytes, got %v", m, err)
	}
	return c.Close()
}
