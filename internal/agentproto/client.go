package agentproto

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"golang.org/x/net/http2"
)

// Client talks to one agent over one stream. It is safe for concurrent use.
// The caller must Close it, which also closes the stream.
type Client struct {
	conn net.Conn
	cc   *http2.ClientConn
}

// NewClient starts an HTTP/2 connection on conn. It does not wait for the
// agent: the first request does.
func NewClient(conn net.Conn) (*Client, error) {
	transport := &http2.Transport{AllowHTTP: true}
	cc, err := transport.NewClientConn(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start http/2 on agent stream: %w", err)
	}
	return &Client{conn: conn, cc: cc}, nil
}

// Close closes the connection and the stream under it.
func (c *Client) Close() error {
	err := c.cc.Close()
	c.conn.Close()
	return err
}

// Health returns the agent's health. It fails if the agent speaks another
// protocol version.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if err := c.call(ctx, http.MethodGet, PathHealth, nil, &h); err != nil {
		return nil, err
	}
	if h.Protocol != Version {
		return &h, fmt.Errorf("agent speaks protocol %d, this cylo speaks %d: rebuild the image with this cylo (cylo image build)", h.Protocol, Version)
	}
	return &h, nil
}

// Sync sets the guest clock and seeds its entropy pool.
func (c *Client) Sync(ctx context.Context, s Sync) error {
	return c.call(ctx, http.MethodPost, PathSync, s, nil)
}

// Shutdown requests that the agent power the guest off. The reply may be lost
// when the guest goes down first, so errors after sending are ignored by
// callers that kill the VMM anyway.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, PathShutdown, nil, nil)
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		return fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("agent %s %s: decode reply: %w", method, path, err)
	}
	return nil
}

// Exec runs spec in the guest. Stdin, if not nil, is copied to the program
// until it returns EOF; a nil stdin gives the program EOF at once. Output
// chunks go to stdout and stderr in the order the agent sent them. Exec
// returns when the agent reports the exit status. Cancelling ctx resets the
// stream, and the agent kills the run.
//
// NOTE: a Read on stdin that blocks forever (a terminal) keeps one
// goroutine alive after Exec returns, until that Read returns.
func (c *Client) Exec(ctx context.Context, spec *ExecSpec, stdin io.Reader, stdout, stderr io.Writer) (*ExitStatus, error) {
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	bodyReader, bodyWriter := io.Pipe()
	go func() {
		bodyWriter.CloseWithError(writeRequestBody(bodyWriter, specJSON, stdin))
	}()
	defer bodyReader.Close()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+PathExec, bodyReader)
	if err != nil {
		return nil, err
	}
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("agent exec: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("agent exec: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}

	for {
		typ, payload, err := ReadFrame(resp.Body)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("agent exec: read output: %w", err)
		}
		switch typ {
		case FrameStdout:
			if _, err := stdout.Write(payload); err != nil {
				return nil, fmt.Errorf("agent exec: write stdout: %w", err)
			}
		case FrameStderr:
			if _, err := stderr.Write(payload); err != nil {
				return nil, fmt.Errorf("agent exec: write stderr: %w", err)
			}
		case FrameExit:
			var status ExitStatus
			if err := json.Unmarshal(payload, &status); err != nil {
				return nil, fmt.Errorf("agent exec: decode exit status: %w", err)
			}
			return &status, nil
		default:
			return nil, fmt.Errorf("agent exec: unexpected frame type %q", typ)
		}
	}
}

func writeRequestBody(w io.Writer, specJSON []byte, stdin io.Reader) error {
	if err := WriteFrame(w, FrameSpec, specJSON); err != nil {
		return err
	}
	if stdin != nil {
		buf := make([]byte, MaxDataChunk)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if werr := WriteFrame(w, FrameStdin, buf[:n]); werr != nil {
					return werr
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("read stdin: %w", err)
			}
		}
	}
	return WriteFrame(w, FrameStdinEOF, nil)
}
