package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// procStartTimeout bounds how long StartProc and Restart wait for a
// redis-server to answer PING, retries included.
const procStartTimeout = 10 * time.Second

// Proc is a redis-server process of the test's own, listening on a free
// port of 127.0.0.1 with nothing kept on disk, that the test can kill and
// restart to inject faults. Make one with StartProc. Its methods are safe for
// concurrent use.
type Proc struct {
	bin  string
	dir  string
	args []string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd     // the running process, nil after Kill
	done chan struct{} // closed when cmd has exited and been waited for
}

// StartProc starts a redis-server on a free loopback port with
// `--save "" --appendonly no`, a temporary directory and args added to its
// command line, and waits (at most 10 s) until it answers PING. The test's
// cleanup kills whichever process is running when the test ends. Without a
// redis-server binary the test skips, or fails when CI is set.
func StartProc(tb testing.TB, args ...string) *Proc {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("no redis-server binary (%v): CI needs one (make redis installs it)", err)
		}
		tb.Skipf("skipped: no redis-server binary (%v)", err)
	}
	// TempDir first: cleanups run last-in first-out, so the process is
	// killed before its directory is removed.
	p := &Proc{bin: bin, dir: tb.TempDir(), args: args}
	tb.Cleanup(p.Kill)
	deadline := time.Now().Add(procStartTimeout)
	for {
		// Another process may take the free port between our probe and
		// redis-server's bind; then try another port.
		if p.port, err = freePort(); err != nil {
			tb.Fatal(err)
		}
		err = p.start(deadline)
		if err == nil {
			return p
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			tb.Fatalf("redis-server did not start: %v", err)
		}
	}
}

// Addr returns the address of the process, host:port. It stays the same
// across Restart.
func (p *Proc) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

// Kill sends SIGKILL to the running redis-server and waits until it has
// exited. It does nothing when no process runs, so it can be called again.
func (p *Proc) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked()
}

// Restart kills the running redis-server, if any, and starts a new, empty
// one on the same port, then waits (at most 10 s) until it answers PING.
// While the port cannot be bound yet it retries.
func (p *Proc) Restart(tb testing.TB) {
	tb.Helper()
	p.Kill()
	deadline := time.Now().Add(procStartTimeout)
	for {
		err := p.start(deadline)
		if err == nil {
			return
		}
		if !errors.Is(err, errAddrInUse) || time.Now().After(deadline) {
			tb.Fatalf("redis-server did not restart on %s: %v", p.Addr(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Client returns a client of the process, with opts applied to its options,
// closed when the test ends. It keeps working across Kill and Restart: its
// commands fail while no process runs.
func (p *Proc) Client(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	o := &redis.Options{Addr: p.Addr()}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// errAddrInUse marks a start that failed because the port was taken.
var errAddrInUse = errors.New("address in use")

// start starts a redis-server on p.port and waits until it answers PING or
// exits, or until deadline. On error no process is left running; the error
// wraps errAddrInUse when the port could not be bound.
func (p *Proc) start(deadline time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.killLocked()
	// redis-server logs to stdout; a file as stdout and stderr keeps its
	// output for error messages without a copying goroutine.
	logfile := filepath.Join(p.dir, "redis.log")
	out, err := os.Create(logfile)
	if err != nil {
		return err
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(p.bin, append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(p.port),
		"--save", "", "--appendonly", "no", "--dir", p.dir,
		"--cluster-config-file", filepath.Join(p.dir, "nodes.conf")}, p.args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	for {
		err := ping(p.Addr())
		if err == nil {
			return nil
		}
		select {
		case <-done:
			p.cmd, p.done = nil, nil
			log := logTail(logfile)
			err = fmt.Errorf("redis-server on port %d exited (%v)%s", p.port, cmd.ProcessState, log)
			if strings.Contains(log, "in use") {
				err = fmt.Errorf("%w: %w", errAddrInUse, err)
			}
			return err
		default:
		}
		if time.Now().After(deadline) {
			p.killLocked()
			return fmt.Errorf("redis-server on port %d did not answer PING: %v%s", p.port, err, logTail(logfile))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killLocked kills the running process, by the pid it was started with,
// and waits for it. p.mu must be held.
func (p *Proc) killLocked() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill() // SIGKILL
	<-p.done
	p.cmd, p.done = nil, nil
}

// ping sends one PING to addr on a connection of its own and checks that
// the answer is PONG, within 500 ms.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// logTail returns the last lines of a redis-server log file, for error
// messages, or "" when there are none.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return "; log: " + strings.Join(lines, " | ")
}
