package store

import "testing"

func TestOldestCompatible(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cur    int32
		compat map[int32]int32
		want   int32
	}{
		{0, nil, 0},
		{4, nil, 4}, // nothing recorded: only its own code
		{4, map[int32]int32{1: 1, 2: 2, 3: 3, 4: 4}, 4},
		{5, map[int32]int32{4: 4, 5: 4}, 4},             // 5 expands 4
		{6, map[int32]int32{4: 4, 5: 4, 6: 4}, 4},       // two expansions
		{6, map[int32]int32{4: 4, 5: 4, 6: 5}, 5},       // 6 contracts: 4's code is out
		{6, map[int32]int32{4: 3, 5: 2, 6: 5}, 5},       // the newest one decides here
		{6, map[int32]int32{4: 3, 5: 5, 6: 3}, 5},       // a contraction in between counts too
		{6, map[int32]int32{2: 1, 3: 1, 4: 1, 6: 2}, 5}, // 5 has no record: nothing older than 5
	} {
		if got := oldestCompatible(c.cur, c.compat); got != c.want {
			t.Errorf("oldestCompatible(%d, %v) = %d, want %d", c.cur, c.compat, got, c.want)
		}
	}
}

func TestDeclaredCompat(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		sql  string
		want int32 // 0: an error
	}{
		{"CREATE TABLE x ();", 5},
		{"-- pushproxy:compatible-with 3\nCREATE TABLE x ();", 3},
		{"--pushproxy:compatible-with 5   \nCREATE TABLE x ();", 5},
		{"CREATE TABLE x (); -- pushproxy:compatible-with 3", 5}, // not on a line of its own
		{"-- pushproxy:compatible-with 6\n", 0},
		{"-- pushproxy:compatible-with 0\n", 0},
		{"-- pushproxy:compatible-with -1\n", 0},
		{"-- pushproxy:compatible-with 3x\n", 0},
		{"-- pushproxy:compatible-with 3\n-- pushproxy:compatible-with 3\n", 0},
	} {
		got, err := declaredCompat(5, "005_x.sql", c.sql)
		if (err != nil) != (c.want == 0) || got != c.want {
			t.Errorf("declaredCompat(5, %q) = %d, %v; want %d", c.sql, got, err, c.want)
		}
	}
}
