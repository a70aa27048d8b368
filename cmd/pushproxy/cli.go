package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// adminClient talks to a running proxy's admin API, for the operator commands.
type adminClient struct {
	Server string
	Token  string
	JSON   bool
	http   *http.Client
}

func (c *adminClient) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Server, "server", "http://127.0.0.1:8080", "base URL of a pushproxy instance")
	fs.StringVar(&c.Token, "admin-token", "", "the instance's admin token")
	fs.BoolVar(&c.JSON, "json", false, "print the API's JSON instead of a table")
}

// call does one admin API request and decodes its JSON answer into out (raw JSON when out is
// a *json.RawMessage). A problem document becomes an error with its detail.
func (c *adminClient) call(ctx context.Context, method, path string, out any) error {
	if c.Token == "" {
		return fmt.Errorf("an admin token is required: --admin-token or PUSHPROXY_ADMIN_TOKEN")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Server, "/")+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var p struct {
			Detail string `json:"detail"`
		}
		if json.Unmarshal(body, &p) == nil && p.Detail != "" {
			return fmt.Errorf("%s: %s", resp.Status, p.Detail)
		}
		return fmt.Errorf("%s", resp.Status)
	}
	if out == nil || len(body) == 0 {
		return nil
	}
	return json.Unmarshal(body, out)
}

const cliUsage = `Usage:
  pushproxy streams list [--sort backlog|age|errors] [--state S] [--host H] [--limit N]
  pushproxy streams show ID
  pushproxy streams close ID
  pushproxy backlog top [--limit N]
  pushproxy devices show ID

Talk to a running instance's admin API (--server, --admin-token), printing aligned tables,
or the API's JSON with --json.`

// runCLI runs the operator commands streams, backlog and devices.
func runCLI(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) < 2 {
		fmt.Fprintln(stderr, cliUsage)
		return 2
	}
	name := args[0] + " " + args[1]
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &adminClient{http: &http.Client{}}
	c.flags(fs)
	var order, state, host string
	limit := 50
	switch name {
	case "streams list":
		fs.StringVar(&order, "sort", "backlog", "backlog, age or errors")
		fs.StringVar(&state, "state", "", "held, closed or failed (empty: any)")
		fs.StringVar(&host, "host", "", "only streams of this origin host")
		fs.IntVar(&limit, "limit", 50, "most streams shown")
	case "backlog top":
		fs.IntVar(&limit, "limit", 10, "most streams shown")
	case "streams show", "streams close", "devices show":
	default:
		fmt.Fprintf(stderr, "pushproxy: unknown command %q\n\n%s\n", name, cliUsage)
		return 2
	}
	fs.Usage = usage(fs, stderr, cliUsage)
	// The ID comes before or after the flags.
	var id string
	rest := args[2:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		id, rest = rest[0], rest[1:]
	}
	if code, ok := parseCommand(fs, name, rest, getenv, stderr); !ok {
		return code
	}
	if id == "" && fs.NArg() > 0 {
		id = fs.Arg(0)
	}
	needsID := strings.HasSuffix(name, "show") || strings.HasSuffix(name, "close")
	if needsID && id == "" {
		fmt.Fprintf(stderr, "pushproxy %s: an id is required\n", name)
		return 2
	}
	if err := c.run(ctx, name, id, order, state, host, limit, stdout); err != nil {
		fmt.Fprintf(stderr, "pushproxy %s: %v\n", name, err)
		return 1
	}
	return 0
}

func (c *adminClient) run(ctx context.Context, name, id, order, state, host string, limit int, w io.Writer) error {
	esc := url.PathEscape
	switch name {
	case "streams list", "backlog top":
		q := url.Values{"sort": {order}, "limit": {fmt.Sprint(limit)}}
		if name == "backlog top" {
			q.Set("sort", "backlog")
			q.Set("state", "held")
		}
		if state != "" {
			q.Set("state", state)
		}
		if host != "" {
			q.Set("host", host)
		}
		var page struct {
			Streams []struct {
				ID            string     `json:"id"`
				Host          string     `json:"host"`
				State         string     `json:"state"`
				Backlog       int64      `json:"backlog"`
				OldestEventAt *time.Time `json:"oldest_event_at"`
				Upstream      struct {
					Status    int    `json:"status"`
					Connected bool   `json:"connected"`
					LastError string `json:"last_error"`
				} `json:"upstream"`
			} `json:"streams"`
		}
		if c.JSON {
			return c.printJSON(ctx, "/v1/admin/streams?"+q.Encode(), w)
		}
		if err := c.call(ctx, http.MethodGet, "/v1/admin/streams?"+q.Encode(), &page); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "STREAM\tSTATE\tBACKLOG\tOLDEST\tHOST\tUPSTREAM\tLAST ERROR")
		for _, s := range page.Streams {
			oldest := "-"
			if s.OldestEventAt != nil {
				oldest = time.Since(*s.OldestEventAt).Round(time.Second).String()
			}
			up := fmt.Sprint(s.Upstream.Status)
			if s.Upstream.Connected {
				up += " connected"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.ID, s.State, s.Backlog, oldest, s.Host, up, s.Upstream.LastError)
		}
		return tw.Flush()
	case "streams show":
		return c.printJSONOrFields(ctx, "/v1/admin/streams/"+esc(id), w)
	case "streams close":
		var out map[string]any
		if err := c.call(ctx, http.MethodPost, "/v1/admin/streams/"+esc(id)+"/close", &out); err != nil {
			return err
		}
		if c.JSON {
			return json.NewEncoder(w).Encode(out)
		}
		_, err := fmt.Fprintf(w, "closed %s: resume the origin at %q (%v queued events discarded)\n", id, out["last_event_id"], out["discarded"])
		return err
	case "devices show":
		return c.printJSONOrFields(ctx, "/v1/admin/devices/"+esc(id), w)
	}
	return nil
}

func (c *adminClient) printJSON(ctx context.Context, path string, w io.Writer) error {
	var raw json.RawMessage
	if err := c.call(ctx, http.MethodGet, path, &raw); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, string(raw))
	return err
}

// printJSONOrFields prints an object as aligned "key  value" lines (nested objects with
// dotted keys), or as JSON with --json.
func (c *adminClient) printJSONOrFields(ctx context.Context, path string, w io.Writer) error {
	if c.JSON {
		return c.printJSON(ctx, path, w)
	}
	var obj map[string]any
	if err := c.call(ctx, http.MethodGet, path, &obj); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printFields(tw, "", obj)
	return tw.Flush()
}

func printFields(w io.Writer, prefix string, obj map[string]any) {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := obj[k].(type) {
		case map[string]any:
			printFields(w, prefix+k+".", v)
		case []any:
			b, _ := json.Marshal(v)
			fmt.Fprintf(w, "%s%s\t%s\n", prefix, k, b)
		case nil:
			fmt.Fprintf(w, "%s%s\t-\n", prefix, k)
		default:
			fmt.Fprintf(w, "%s%s\t%v\n", prefix, k, v)
		}
	}
}
