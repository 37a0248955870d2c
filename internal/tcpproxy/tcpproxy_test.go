package tcpproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echo serves lines back until the test ends.
func echo(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) (string, error) {
	t.Helper()
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return "", err
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return r.ReadString('\n')
}

func TestFaults(t *testing.T) {
	p := Start(t, echo(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(t, c, r, "a"); got != "a\n" || err != nil {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	p.DelayAnswers(100 * time.Millisecond)
	start := time.Now()
	if got, err := roundTrip(t, c, r, "b"); got != "b\n" || err != nil || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("delayed answer: %q, %v after %v; want b after at least 100ms", got, err, time.Since(start))
	}
	p.DelayAnswers(0)

	p.Freeze()
	if _, err := c.Write([]byte("c\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("an answer came through a frozen proxy")
	}
	p.Unfreeze()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); got != "c\n" || err != nil {
		t.Fatalf("after Unfreeze: %q, %v; want the held answer", got, err)
	}

	p.DropNextAnswer()
	if got, err := roundTrip(t, c, r, "d"); err == nil || p.Dropped() != 1 {
		t.Fatalf("dropped answer: got %q, err %v, %d dropped; want the connection closed without it", got, err, p.Dropped())
	}

	p.Cut()
	if c2, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		c2.Close()
		t.Fatal("a connection was accepted after Cut")
	}
}
