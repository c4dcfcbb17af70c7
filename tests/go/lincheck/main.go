// Command lincheck decides whether a recorded history of etcd KV requests
// is linearizable, with porcupine (the checker of etcd's robustness suite),
// and whether the header revisions it saw respect real time. The fault
// tests of raftkv (tests/src/history.rs) record the history and run it.
//
//	lincheck HISTORY.json
//
// The history is a JSON array of operations, each
//
//	{"client": 3, "call": 1200, "return": 5400,   // nanoseconds; return -1: never answered
//	 "input":  {"op": "put", "key": "k1", "value": "v17", "lease": 0, "expect_mod": 0},
//	 "output": {"status": "ok", "rev": 12, "found": true, "value": "v17",
//	            "mod": 12, "ver": 3, "lease": 0, "deleted": 1, "succeeded": true}}
//
// op is one of
//   - get: the key's value, mod revision, version and lease (found false: absent);
//   - put: value, with lease if not 0; rev is the header revision, the put's own;
//   - delete: deleted is how many keys it deleted;
//   - txn: if the key's mod revision equals expect_mod (0: absent) then put
//     value, else get the key (found, value, mod, ver, lease answer the get);
//   - revoke: the lease, whose only key is key (each lease holds one key).
//
// status is "ok" (answered), "unknown" (no answer: it may or may not have
// taken effect, at any time after its call) or "lease_not_found" (a put
// refused because its lease is gone). The recorder has already resolved
// puts of unknown outcome from the store's watch history: found there, they
// are "ok" with their revision and return -1; not found, they are left out.
//
// Keys are independent objects (linearizability is compositional), so each
// key's operations are checked on their own. On a violation lincheck prints
// the key and a minimal history: the shortest prefix of that key's history
// that is not linearizable, without the reads it does not need. Exit status: 0
// linearizable, 1 not, 2 bad input or the check timed out.
package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

type input struct {
	Op        string `json:"op"`
	Key       string `json:"key"`
	Value     string `json:"value,omitempty"`
	Lease     int64  `json:"lease,omitempty"`
	ExpectMod int64  `json:"expect_mod,omitempty"`
}

type output struct {
	Status    string `json:"status"`
	Rev       int64  `json:"rev,omitempty"`
	Found     bool   `json:"found,omitempty"`
	Value     string `json:"value,omitempty"`
	Mod       int64  `json:"mod,omitempty"`
	Ver       int64  `json:"ver,omitempty"`
	Lease     int64  `json:"lease,omitempty"`
	Deleted   int64  `json:"deleted,omitempty"`
	Succeeded bool   `json:"succeeded,omitempty"`
}

type record struct {
	Client int    `json:"client"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"`
	Input  input  `json:"input"`
	Output output `json:"output"`
}

// state is one key as the model sees it.
type state struct {
	Found bool
	Value string
	Mod   int64
	Ver   int64
	Lease int64
	// Revoked leases of this key, sorted, comma-separated (comparable).
	Revoked string
}

func (s state) revoked(lease int64) bool {
	for _, l := range strings.Split(s.Revoked, ",") {
		if l == strconv.FormatInt(lease, 10) {
			return true
		}
	}
	return false
}

func (s state) withRevoked(lease int64) state {
	if s.revoked(lease) {
		return s
	}
	ls := []string{strconv.FormatInt(lease, 10)}
	if s.Revoked != "" {
		ls = append(ls, strings.Split(s.Revoked, ",")...)
	}
	sort.Strings(ls)
	s.Revoked = strings.Join(ls, ",")
	return s
}

func (s state) put(in input, rev int64) state {
	s.Found, s.Value, s.Mod, s.Ver, s.Lease = true, in.Value, rev, s.Ver+1, in.Lease
	return s
}

func (s state) absent() state {
	s.Found, s.Value, s.Mod, s.Ver, s.Lease = false, "", 0, 0, 0
	return s
}

// sees reports whether a read of the key answered what the state holds.
func (s state) sees(out output) bool {
	if !s.Found {
		return !out.Found
	}
	return out.Found && out.Value == s.Value && out.Mod == s.Mod && out.Ver == s.Ver && out.Lease == s.Lease
}

func step(st, in, out interface{}) (bool, interface{}) {
	s, i, o := st.(state), in.(input), out.(output)
	unknown := o.Status == "unknown"
	switch i.Op {
	case "get":
		return s.sees(o), s
	case "put":
		if o.Status == "lease_not_found" {
			return i.Lease != 0 && s.revoked(i.Lease), s
		}
		if i.Lease != 0 && s.revoked(i.Lease) {
			return unknown, s
		}
		if unknown {
			// Never seen in the store's history: the recorder left it
			// out; what remains was resolved. Kept for safety: no effect.
			return true, s
		}
		return o.Rev > s.Mod, s.put(i, o.Rev)
	case "delete":
		if unknown {
			return true, s.absent()
		}
		want := int64(0)
		if s.Found {
			want = 1
		}
		return o.Deleted == want, s.absent()
	case "txn":
		matches := s.Mod == i.ExpectMod
		if unknown {
			// Resolved by the recorder like a put: an unknown txn left
			// here did not put, whatever its compare said.
			return true, s
		}
		if o.Succeeded != matches {
			return false, s
		}
		if matches {
			return o.Rev > s.Mod, s.put(i, o.Rev)
		}
		return s.sees(o), s
	case "revoke":
		next := s.withRevoked(i.Lease)
		if s.Found && s.Lease == i.Lease {
			next = next.absent()
		}
		return true, next
	}
	return false, s
}

func describe(in, out interface{}) string {
	i, o := in.(input), out.(output)
	var res string
	switch {
	case o.Status != "ok":
		res = o.Status
	case i.Op == "get" || (i.Op == "txn" && !o.Succeeded):
		if o.Found {
			res = fmt.Sprintf("%q mod=%d ver=%d lease=%d", o.Value, o.Mod, o.Ver, o.Lease)
		} else {
			res = "absent"
		}
		if i.Op == "txn" {
			res = "failed, " + res
		}
	case i.Op == "delete":
		res = fmt.Sprintf("deleted=%d", o.Deleted)
	default:
		res = "ok"
	}
	if o.Rev != 0 {
		res += fmt.Sprintf(" @%d", o.Rev)
	}
	args := ""
	switch i.Op {
	case "put":
		args = fmt.Sprintf(" %q", i.Value)
	case "txn":
		args = fmt.Sprintf(" mod==%d ? put %q", i.ExpectMod, i.Value)
	}
	if i.Lease != 0 {
		args += fmt.Sprintf(" lease=%d", i.Lease)
	}
	return fmt.Sprintf("%s(%s%s) -> %s", i.Op, i.Key, args, res)
}

var model = porcupine.Model{
	Init:              func() interface{} { return state{} },
	Step:              step,
	DescribeOperation: describe,
	DescribeState: func(st interface{}) string {
		s := st.(state)
		if !s.Found {
			return "absent"
		}
		return fmt.Sprintf("%q mod=%d ver=%d lease=%d", s.Value, s.Mod, s.Ver, s.Lease)
	},
}

// checkTimeout bounds one key's check; a history that takes longer is
// reported as undecided (exit 2), never as linearizable.
const checkTimeout = 60 * time.Second

// maxShown bounds the minimal history printed; the rest is in the file.
const maxShown = 40

func check(ops []porcupine.Operation) porcupine.CheckResult {
	return porcupine.CheckOperationsTimeout(model, ops, checkTimeout)
}

// readOnly reports whether an operation cannot have changed the key.
func readOnly(op porcupine.Operation) bool {
	i, o := op.Input.(input), op.Output.(output)
	return o.Status != "unknown" && (i.Op == "get" || (i.Op == "txn" && !o.Succeeded) || o.Status == "lease_not_found")
}

// upTo is the history as known at time t: the writes invoked before t and
// the reads answered before t (whatever a read saw was invoked before it
// returned, so it is there).
func upTo(ops []porcupine.Operation, t int64) []porcupine.Operation {
	var prefix []porcupine.Operation
	for _, op := range ops {
		if (readOnly(op) && op.Return < t) || (!readOnly(op) && op.Call < t) {
			prefix = append(prefix, op)
		}
	}
	return prefix
}

// minimize cuts a non-linearizable history down to what shows it: the
// earliest moment the history known so far is already not linearizable,
// then the reads it does not need, one at a time. Writes are kept (taking
// one out would change the versions every later read sees).
func minimize(ops []porcupine.Operation) []porcupine.Operation {
	var times []int64
	for _, op := range ops {
		times = append(times, op.Call+1)
		if op.Return != math.MaxInt64 {
			times = append(times, op.Return+1)
		}
	}
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	first := sort.Search(len(times), func(i int) bool { return check(upTo(ops, times[i])) == porcupine.Illegal })
	if first < len(times) {
		ops = upTo(ops, times[first])
	}
	for i := 0; i < len(ops); {
		if !readOnly(ops[i]) {
			i++
			continue
		}
		rest := append(append([]porcupine.Operation{}, ops[:i]...), ops[i+1:]...)
		if check(rest) == porcupine.Illegal {
			ops = rest
		} else {
			i++
		}
	}
	return ops
}

// changes reports whether an answered operation wrote a new revision.
func changes(r record) bool {
	switch r.Input.Op {
	case "put":
		return true
	case "delete":
		return r.Output.Deleted > 0
	case "txn":
		return r.Output.Succeeded
	}
	return false
}

// revisionOrder checks what keys cannot show: the header revision never
// goes back in real time (an operation invoked after another returned
// answers at least its revision, and a write after it a greater one), and
// no two writes share a revision.
func revisionOrder(records []record) []string {
	var answered []record
	for _, r := range records {
		if r.Output.Status == "ok" && r.Return >= 0 && r.Output.Rev > 0 {
			answered = append(answered, r)
		}
	}
	sort.Slice(answered, func(a, b int) bool { return answered[a].Return < answered[b].Return })
	maxRev := make([]int64, len(answered))
	maxAt := make([]int, len(answered))
	for i, r := range answered {
		maxRev[i], maxAt[i] = r.Output.Rev, i
		if i > 0 && maxRev[i-1] >= r.Output.Rev {
			maxRev[i], maxAt[i] = maxRev[i-1], maxAt[i-1]
		}
	}
	var problems []string
	byRev := map[int64]record{}
	for _, r := range answered {
		if changes(r) {
			if other, dup := byRev[r.Output.Rev]; dup {
				problems = append(problems, fmt.Sprintf("two writes at revision %d: %s and %s",
					r.Output.Rev, describe(other.Input, other.Output), describe(r.Input, r.Output)))
			}
			byRev[r.Output.Rev] = r
		}
		// The operations that returned before r was called.
		n := sort.Search(len(answered), func(i int) bool { return answered[i].Return >= r.Call })
		if n == 0 {
			continue
		}
		before := answered[maxAt[n-1]]
		if r.Output.Rev < maxRev[n-1] || (changes(r) && r.Output.Rev == maxRev[n-1]) {
			problems = append(problems, fmt.Sprintf("revision went back: %s (client %d) answered after %s (client %d) had returned",
				describe(r.Input, r.Output), r.Client, describe(before.Input, before.Output), before.Client))
		}
	}
	return problems
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: lincheck HISTORY.json")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "lincheck:", err)
		os.Exit(2)
	}
	var records []record
	if err := json.Unmarshal(data, &records); err != nil {
		fmt.Fprintln(os.Stderr, "lincheck: bad history:", err)
		os.Exit(2)
	}
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, r := range records {
		switch r.Input.Op {
		case "get", "put", "delete", "txn", "revoke":
		default:
			fmt.Fprintf(os.Stderr, "lincheck: unknown op %q\n", r.Input.Op)
			os.Exit(2)
		}
		switch r.Output.Status {
		case "ok", "unknown", "lease_not_found":
		default:
			fmt.Fprintf(os.Stderr, "lincheck: unknown status %q\n", r.Output.Status)
			os.Exit(2)
		}
		ret := r.Return
		if ret < 0 {
			ret = math.MaxInt64
		}
		if _, seen := byKey[r.Input.Key]; !seen {
			keys = append(keys, r.Input.Key)
		}
		byKey[r.Input.Key] = append(byKey[r.Input.Key], porcupine.Operation{
			ClientId: r.Client, Input: r.Input, Call: r.Call, Output: r.Output, Return: ret,
		})
	}
	sort.Strings(keys)
	failed := false
	for _, key := range keys {
		switch check(byKey[key]) {
		case porcupine.Ok:
		case porcupine.Illegal:
			failed = true
			ops := minimize(byKey[key])
			sort.Slice(ops, func(a, b int) bool { return ops[a].Call < ops[b].Call })
			fmt.Printf("NOT LINEARIZABLE: key %q (%d operations); a minimal history of %d (the shortest prefix, the reads it does not need removed):\n", key, len(byKey[key]), len(ops))
			if len(ops) > maxShown {
				fmt.Printf("  (%d earlier operations not shown: the history file has them)\n", len(ops)-maxShown)
				ops = ops[len(ops)-maxShown:]
			}
			for _, op := range ops {
				ret := "never"
				if op.Return != math.MaxInt64 {
					ret = strconv.FormatInt(op.Return, 10)
				}
				fmt.Printf("  client %3d  [%d, %s]  %s\n", op.ClientId, op.Call, ret, describe(op.Input, op.Output))
			}
		default:
			fmt.Printf("UNDECIDED: key %q (%d operations): the check took over %s\n", key, len(byKey[key]), checkTimeout)
			os.Exit(2)
		}
	}
	for _, p := range revisionOrder(records) {
		failed = true
		fmt.Println("REVISION ORDER:", p)
	}
	if failed {
		os.Exit(1)
	}
	fmt.Printf("linearizable: %d operations on %d keys\n", len(records), len(keys))
}
