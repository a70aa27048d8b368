package origin

import (
	"slices"
	"strconv"
)

// Event types of the ticker.
const (
	TypeSnapshot = "snapshot"
	TypeAdd      = "add"
	TypeRemove   = "remove"
	TypeUpdate   = "update"
)

// symbol is one stock of the universe. Prices are in cents.
type symbol struct {
	name   string
	price  int64
	listed bool
}

// symbolName is the i-th name of a universe of n: upper-case letters, at least three, the
// index scrambled (times a prime coprime to 26^w) so that neighbours do not look alike.
func symbolName(i, n int) string {
	w, space := 3, 26*26*26
	for space < n {
		w++
		space *= 26
	}
	v := (i*7919 + 1234) % space
	b := make([]byte, w)
	for k := w - 1; k >= 0; k-- {
		b[k] = byte('A' + v%26)
		v /= 26
	}
	return string(b)
}

// initSymbols builds the universe: every tenth symbol starts unlisted, so that the ticker has
// something to add from the start.
func (o *Origin) initSymbols() {
	n := o.opts.Symbols
	o.syms = make([]symbol, n)
	for i := range o.syms {
		o.syms[i] = symbol{name: symbolName(i, n), price: 1000 + o.rng.Int64N(49000)}
	}
	slices.SortFunc(o.syms, func(a, b symbol) int {
		if a.name < b.name {
			return -1
		}
		return 1
	})
	for i := range o.syms {
		if i%10 == 9 {
			o.unlisted = append(o.unlisted, i)
		} else {
			o.syms[i].listed = true
			o.listed = append(o.listed, i)
		}
	}
}

// Symbols returns the names of the symbol universe, sorted.
func (o *Origin) Symbols() []string {
	names := make([]string, len(o.syms))
	for i, s := range o.syms { // names never change
		names[i] = s.name
	}
	return names
}

// Tick generates one ticker event now, publishes it and returns it (in a slice of one).
func (o *Origin) Tick() []Event { return o.TickN(1) }

// TickN generates n ticker events now as one batch: they get consecutive ids, enter the
// history and are broadcast together.
func (o *Origin) TickN(n int) []Event {
	if n <= 0 {
		return nil
	}
	evs := make([]Event, 0, n)
	o.mu.Lock()
	defer o.mu.Unlock()
	ms := o.now().UnixMilli()
	for range n {
		evs = append(evs, o.stepLocked(ms).ev)
	}
	o.publishedLocked()
	return evs
}

// moveRandomLocked moves a random symbol index from one list to the other and returns it.
func (o *Origin) moveRandomLocked(from, to *[]int) int {
	k := o.rng.IntN(len(*from))
	i := (*from)[k]
	(*from)[k] = (*from)[len(*from)-1]
	*from = (*from)[:len(*from)-1]
	*to = append(*to, i)
	return i
}

// stepLocked makes one change to the universe and appends its event.
func (o *Origin) stepLocked(ms int64) *entry {
	r := o.rng.IntN(100)
	switch {
	case r == 0 && len(o.listed) > 1:
		s := &o.syms[o.moveRandomLocked(&o.listed, &o.unlisted)]
		s.listed = false
		return o.appendLocked(TypeRemove, s.name, func(b []byte) []byte {
			b = appendSymbol(b, s.name)
			return appendTime(b, ms)
		}, "")
	case r == 1 && len(o.unlisted) > 0:
		s := &o.syms[o.moveRandomLocked(&o.unlisted, &o.listed)]
		s.listed = true
		return o.appendLocked(TypeAdd, s.name, func(b []byte) []byte {
			b = appendSymbol(b, s.name)
			b = append(b, `,"price":`...)
			b = appendCents(b, s.price)
			return appendTime(b, ms)
		}, "")
	}
	s := &o.syms[o.listed[o.rng.IntN(len(o.listed))]]
	m := max(1, s.price/200) // moves of up to 0.5%
	change := o.rng.Int64N(2*m+1) - m
	if s.price+change < 1 {
		change = -change
	}
	s.price += change
	return o.appendLocked(TypeUpdate, s.name, func(b []byte) []byte {
		b = appendSymbol(b, s.name)
		b = append(b, `,"price":`...)
		b = appendCents(b, s.price)
		b = append(b, `,"change":`...)
		b = appendCents(b, change)
		return appendTime(b, ms)
	}, "")
}

func appendSymbol(b []byte, name string) []byte {
	b = append(b, `{"symbol":"`...)
	b = append(b, name...)
	return append(b, '"')
}

func appendTime(b []byte, ms int64) []byte {
	b = append(b, `,"time":`...)
	b = strconv.AppendInt(b, ms, 10)
	return append(b, '}')
}

// appendCents appends c/100 as a JSON number with two decimals.
func appendCents(b []byte, c int64) []byte {
	if c < 0 {
		b = append(b, '-')
		c = -c
	}
	b = strconv.AppendInt(b, c/100, 10)
	b = append(b, '.', byte('0'+c/10%10), byte('0'+c%10))
	return b
}

// snapshotLocked is the wire form of a snapshot event for the current head, restricted to
// filter when it is not nil.
func (o *Origin) snapshotLocked(filter map[string]bool) string {
	if filter == nil && o.snapWire != "" && o.snapSeq == o.head {
		return o.snapWire
	}
	id := strconv.FormatUint(o.head, 10)
	b := make([]byte, 0, 64+40*len(o.listed))
	b = append(b, "id: "...)
	b = append(b, id...)
	b = append(b, "\nevent: "+TypeSnapshot+"\ndata: {\"id\":\""...)
	b = append(b, id...)
	b = append(b, `","time":`...)
	b = strconv.AppendInt(b, o.now().UnixMilli(), 10)
	b = append(b, `,"symbols":[`...)
	first := true
	for i := range o.syms {
		s := &o.syms[i]
		if !s.listed || (filter != nil && !filter[s.name]) {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendSymbol(b, s.name)
		b = append(b, `,"price":`...)
		b = appendCents(b, s.price)
		b = append(b, '}')
	}
	b = append(b, "]}\n\n"...)
	w := string(b)
	if filter == nil {
		o.snapSeq, o.snapWire = o.head, w
	}
	return w
}
