package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/cylo-dev/cylo"
)

// snippet is a program per language: hello prints a greeting; readExit
// echoes its stdin upper-cased and exits 3.
var snippets = []struct {
	lang     cylo.Language
	profile  string
	hello    string
	readExit string
}{
	{cylo.Bash, "base",
		`echo "hello from bash"`,
		`read -r line; echo "${line^^}"; exit 3`},
	{cylo.Python, "base",
		`print("hello from python")`,
		"import sys\nprint(sys.stdin.read().strip().upper())\nsys.exit(3)"},
	{cylo.JavaScript, "base",
		`console.log("hello from javascript")`,
		"const s = require('fs').readFileSync(0, 'utf8');\nconsole.log(s.trim().toUpperCase());\nprocess.exit(3);"},
	{cylo.Go, "full",
		"package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\") }\n",
		"package main\n\nimport (\n\t\"fmt\"\n\t\"io\"\n\t\"os\"\n\t\"strings\"\n)\n\nfunc main() {\n\tb, _ := io.ReadAll(os.Stdin)\n\tfmt.Println(strings.ToUpper(strings.TrimSpace(string(b))))\n\tos.Exit(3)\n}\n"},
	{cylo.Rust, "full",
		"fn main() { println!(\"hello from rust\"); }\n",
		"use std::io::Read;\nfn main() {\n    let mut s = String::new();\n    std::io::stdin().read_to_string(&mut s).unwrap();\n    println!(\"{}\", s.trim().to_uppercase());\n    std::process::exit(3);\n}\n"},
}

func TestLanguagesInQEMU(t *testing.T) {
	for _, s := range snippets {
		t.Run(string(s.lang), func(t *testing.T) {
			b := newBackend(t, "qemu", s.profile)

			hello := run(t, b, &cylo.Request{Language: s.lang, Code: s.hello, Timeout: timeoutFor(s.lang)})
			want := "hello from " + string(s.lang) + "\n"
			if string(hello.Stdout) != want || hello.ExitCode != 0 {
				t.Errorf("hello: exit %d, stdout %q, stderr %q; want exit 0 and %q", hello.ExitCode, hello.Stdout, hello.Stderr, want)
			}

			res := run(t, b, &cylo.Request{Language: s.lang, Code: s.readExit, Stdin: strings.NewReader("quiet words\n"), Timeout: timeoutFor(s.lang)})
			if res.ExitCode != 3 {
				t.Errorf("read-exit: exit code %d, want 3 (stderr %q)", res.ExitCode, res.Stderr)
			}
			if string(res.Stdout) != "QUIET WORDS\n" {
				t.Errorf("read-exit: stdout %q, want %q", res.Stdout, "QUIET WORDS\n")
			}
		})
	}
}

// timeoutFor leaves room for compiling inside a TCG guest, which takes
// tens of seconds for Go and Rust.
func timeoutFor(l cylo.Language) time.Duration {
	if l == cylo.Go || l == cylo.Rust {
		return 3 * time.Minute
	}
	return 30 * time.Second
}
