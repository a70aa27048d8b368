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

// operatorCommands are the commands that look at a running instance through its admin API.
func operatorCommands() []command {
	specs := []struct {
		name, args, summary string
		limit               int // the default of --limit (0: no such flag)
	}{
		{"streams list", "", "streams, largest backlog first (or oldest unread event, or latest upstream error)", 50},
		{"streams show", "ID", "one stream: its state, backlog and upstream health", 0},
		{"streams close", "ID", "stop holding a stream; prints the id to resume the origin at", 0},
		{"backlog top", "", "the largest backlogs of held streams", 10},
		{"backlog totals", "", "the totals the dashboard shows first", 0},
		{"devices show", "ID", "a device: its streams, wake-up state and history", 0},
		{"devices dead", "", "the devices whose push token was reported dead", 20},
		{"origins failing", "", "the origin hosts with failed or disconnected streams", 20},
		{"wakeups recent", "", "the latest wake-ups of all devices, with their outcomes", 20},
	}
	cs := make([]command, 0, len(specs))
	for _, sp := range specs {
		c := command{
			name:    sp.name,
			args:    sp.args,
			summary: sp.summary,
			about: upperFirst(sp.summary) + `.

Asks a running instance's admin API (--server, --admin-token) and prints an aligned table,
or the API's JSON with --json.`,
		}
		if sp.args == "ID" {
			c.nargs = func(args []string) error {
				switch {
				case len(args) == 0:
					return fmt.Errorf("an id is required")
				case len(args) > 1:
					return fmt.Errorf("unexpected argument %q", args[1])
				}
				return nil
			}
		}
		c.setup = func(fs *flag.FlagSet) runFunc {
			a := &adminClient{http: &http.Client{}}
			a.flags(fs)
			var q listQuery
			if sp.name == "streams list" {
				q.order = choice("backlog", "backlog", "age", "errors")
				fs.Var(q.order, "sort", "backlog, age or errors")
				fs.StringVar(&q.state, "state", "", "held, closed or failed (empty: any)")
				fs.StringVar(&q.host, "host", "", "only streams of this origin host")
			}
			if sp.limit > 0 {
				fs.IntVar(&q.limit, "limit", sp.limit, "most rows shown")
			}
			return func(ctx context.Context, args []string, stdout, stderr io.Writer, _ func(string) string) int {
				var id string
				if len(args) > 0 {
					id = args[0]
				}
				if err := a.run(ctx, sp.name, id, q, stdout); err != nil {
					fmt.Fprintf(stderr, "pushproxy %s: %v\n", sp.name, err)
					return 1
				}
				return 0
			}
		}
		cs = append(cs, c)
	}
	return cs
}

// listQuery is the flags of the listing commands.
type listQuery struct {
	order       *choiceFlag
	state, host string
	limit       int
}

func (c *adminClient) run(ctx context.Context, name, id string, lq listQuery, w io.Writer) error {
	esc := url.PathEscape
	switch name {
	case "streams list", "backlog top":
		q := url.Values{"sort": {"backlog"}, "limit": {fmt.Sprint(lq.limit)}}
		if lq.order != nil {
			q.Set("sort", lq.order.value)
		}
		if name == "backlog top" {
			q.Set("sort", "backlog")
			q.Set("state", "held")
		}
		if lq.state != "" {
			q.Set("state", lq.state)
		}
		if lq.host != "" {
			q.Set("host", lq.host)
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
		return c.table(ctx, fmt.Sprintf("/v1/admin/devices?state=dead&limit=%d", lq.limit), "devices", w,
			"DEVICE\tPLATFORM\tDEAD FOR\tHELD STREAMS\tBACKLOG\tREASON",
			"id", "platform", "@dead_at", "held_streams", "backlog", "dead_reason")
	case "origins failing":
		return c.table(ctx, fmt.Sprintf("/v1/admin/origins?limit=%d", lq.limit), "origins", w,
			"HOST\tHELD\tDISCONNECTED\tFAILED\tLAST ERROR AGO\tLAST ERROR",
			"host", "held", "disconnected", "failed", "@last_error_at", "last_error")
	case "wakeups recent":
		return c.table(ctx, fmt.Sprintf("/v1/admin/wakeups?limit=%d", lq.limit), "wakeups", w,
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
