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
  pushproxy backlog totals
  pushproxy devices show ID
  pushproxy devices dead [--limit N]
  pushproxy origins failing [--limit N]
  pushproxy wakeups recent [--limit N]

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
	case "devices dead", "origins failing", "wakeups recent":
		fs.IntVar(&limit, "limit", 20, "most rows shown")
	case "streams show", "streams close", "devices show", "backlog totals":
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
	case "backlog totals":
		return c.printJSONOrFields(ctx, "/v1/admin/totals", w)
	case "devices dead":
		return c.table(ctx, fmt.Sprintf("/v1/admin/devices?state=dead&limit=%d", limit), "devices", w,
			"DEVICE\tPLATFORM\tDEAD FOR\tHELD STREAMS\tBACKLOG\tREASON",
			"id", "platform", "@dead_at", "held_streams", "backlog", "dead_reason")
	case "origins failing":
		return c.table(ctx, fmt.Sprintf("/v1/admin/origins?limit=%d", limit), "origins", w,
			"HOST\tHELD\tDISCONNECTED\tFAILED\tLAST ERROR AGO\tLAST ERROR",
			"host", "held", "disconnected", "failed", "@last_error_at", "last_error")
	case "wakeups recent":
		return c.table(ctx, fmt.Sprintf("/v1/admin/wakeups?limit=%d", limit), "wakeups", w,
			"DEVICE\tPLATFORM\tSTATE\tOUTCOME\tEVENTS\tFINISHED AGO\tERROR",
			"device_id", "platform", "state", "outcome", "pending_events", "@finished_at", "error")
	}
	return nil
}

// table prints the list under key of the JSON at path as an aligned table with header, one
// column per field: "@field" is a time shown as the time since it ("-" when null).
func (c *adminClient) table(ctx context.Context, path, key string, w io.Writer, header string, fields ...string) error {
	if c.JSON {
		return c.printJSON(ctx, path, w)
	}
	var doc map[string][]map[string]any
	if err := c.call(ctx, http.MethodGet, path, &doc); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, row := range doc[key] {
		cells := make([]string, len(fields))
		for i, f := range fields {
			cells[i] = cell(row, f)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func cell(row map[string]any, field string) string {
	if name, ok := strings.CutPrefix(field, "@"); ok {
		s, _ := row[name].(string)
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return "-"
		}
		return time.Since(t).Round(time.Second).String()
	}
	switch v := row[field].(type) {
	case nil:
		return "-"
	case string:
		if v == "" {
			return "-"
		}
		// One line per row, whatever an origin put in its error.
		return strings.Join(strings.Fields(v), " ")
	default:
		return fmt.Sprint(v)
	}
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
