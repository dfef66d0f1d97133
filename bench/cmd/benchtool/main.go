// Command benchtool holds the helpers of the Raksha benchmark (bench/run.sh):
// a process wrapper that measures what a command reads from the kernel's point
// of view, the disk-image and change-pattern generators, and the report
// writer. It uses only the standard library, and golang.org/x/crypto's
// argon2 for the incremental's floor.
//
//	benchtool exec [-o FILE] -- CMD...       run CMD traced; JSON with wall time, rchar, maxrss
//	benchtool measure [flags] -- CMD...      run CMD under /usr/bin/time -v and exec; append a result record
//	benchtool record [flags]                 append a record without running anything (skipped/failed rows)
//	benchtool annotate [flags]               set fields of the last record with a given name
//	benchtool stage -budget N -dest DIR SRC...   copy real files until N bytes are staged
//	benchtool mutate [flags] IMAGE           apply a change pattern, write the extents JSON
//	benchtool mkbig [flags] IMAGE            make a large sparse image with real data at several offsets
//	benchtool warm FILE...                   read the data (non-hole) parts of files, to warm the page cache
//	benchtool cmp A B                        compare two files, skipping ranges that are holes in both
//	benchtool du PATH...                     apparent size (sum of regular files' sizes) in bytes
//	benchtool json FILE KEY                  print a field (dotted path) of a JSON document
//	benchtool size SIZE                      print a size such as 4G or 256KiB in bytes
//	benchtool report [flags]                 print the tables and write RESULTS.md
//	benchtool diskfloor -bytes N FILE        time N bytes of O_DIRECT writes to FILE and their fdatasync
//	benchtool starttime [-n N] -- CMD...     median and fastest wall time of CMD over N runs
//	benchtool incrfloor [-n N] DIR           the clustered incremental's floor: the least any tool keeping
//	                                         Raksha's format and durability must do, timed up to a sync
//	benchtool incrfloor-source FILE          write the chunks the floor reads (bench/run.sh measures
//	benchtool incrfloor-run SRC OUT          one run of the floor in each round, beside the tools)
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "exec":
		err = cmdExec(args)
	case "measure":
		err = cmdMeasure(args)
	case "record":
		err = cmdRecord(args)
	case "annotate":
		err = cmdAnnotate(args)
	case "stage":
		err = cmdStage(args)
	case "mutate":
		err = cmdMutate(args)
	case "mkbig":
		err = cmdMkbig(args)
	case "warm":
		err = cmdWarm(args)
	case "cmp":
		err = cmdCmp(args)
	case "du":
		err = cmdDu(args)
	case "json":
		err = cmdJSON(args)
	case "size":
		err = cmdSize(args)
	case "report":
		err = cmdReport(args)
	case "diskfloor":
		err = cmdDiskFloor(args)
	case "starttime":
		err = cmdStartTime(args)
	case "incrfloor":
		err = cmdIncrFloor(args)
	case "incrfloor-run":
		err = cmdIncrFloorRun(args)
	case "incrfloor-source":
		err = cmdIncrFloorSource(args)
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "benchtool: unknown command %q\n", cmd)
		usage()
	}
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// exitError makes main exit with a given status without printing anything.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func usage() {
	fmt.Fprint(os.Stderr, `usage: benchtool COMMAND [ARGS]
commands: exec measure record annotate stage mutate mkbig warm cmp du json size report diskfloor starttime incrfloor incrfloor-source incrfloor-run
(see the package comment in bench/cmd/benchtool/main.go)
`)
	os.Exit(2)
}

// parseSize parses sizes such as 4G, 4GiB, 512M, 256KiB, 1048576 (binary units;
// "GB"/"MB"/"KB" are taken as binary too, like truncate(1) does for G/M/K).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, fmt.Errorf("empty size")
	}
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	v, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	var mult float64
	switch strings.TrimSuffix(strings.TrimSuffix(unit, "b"), "i") {
	case "":
		mult = 1
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	case "t":
		mult = 1 << 40
	default:
		return 0, fmt.Errorf("bad size unit in %q", s)
	}
	return int64(v * mult), nil
}

func cmdSize(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: benchtool size SIZE")
	}
	n, err := parseSize(args[0])
	if err != nil {
		return err
	}
	fmt.Println(n)
	return nil
}

// cmdJSON prints one field of a JSON document. KEY is a dotted path
// ("stats.bytes_read"; array elements by index, -1 = last); a string prints bare, anything else as JSON. When
// the file holds several JSON values (e.g. progress lines followed by a
// summary), the last one that has the key wins. Exit status 3 if not found.
func cmdJSON(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: benchtool json FILE KEY")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	v, ok := lookupJSON(data, args[1])
	if !ok {
		return exitError(3)
	}
	switch x := v.(type) {
	case string:
		fmt.Println(x)
	default:
		b, _ := json.Marshal(x)
		fmt.Println(string(b))
	}
	return nil
}

// lookupJSON finds KEY in the last JSON value of data that has it. data may
// hold a stream of JSON values and stray non-JSON lines.
func lookupJSON(data []byte, key string) (any, bool) {
	var found any
	ok := false
	try := func(doc any) {
		if v, has := dig(doc, key); has {
			found, ok = v, true
		}
	}
	var doc any
	if json.Unmarshal(data, &doc) == nil {
		try(doc)
		return found, ok
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var d any
		if json.Unmarshal([]byte(line), &d) == nil {
			try(d)
		}
	}
	return found, ok
}

func dig(doc any, key string) (any, bool) {
	cur := doc
	for _, part := range strings.Split(key, ".") {
		switch x := cur.(type) {
		case map[string]any:
			v, has := x[part]
			if !has {
				return nil, false
			}
			cur = v
		case []any: // numeric index; negative counts from the end
			i, err := strconv.Atoi(part)
			if err != nil {
				return nil, false
			}
			if i < 0 {
				i += len(x)
			}
			if i < 0 || i >= len(x) {
				return nil, false
			}
			cur = x[i]
		default:
			return nil, false
		}
	}
	return cur, true
}
