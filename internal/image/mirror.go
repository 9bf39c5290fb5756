package image

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// DefaultMirror is used when the host's apt sources name no mirror for the
// suite.
const DefaultMirror = "http://deb.debian.org/debian"

// hostMirror returns the first URI in the host's apt sources that serves
// suite, or DefaultMirror. It reads the one-line format of
// /etc/apt/sources.list and the deb822 format of sources.list.d/*.sources.
func hostMirror(suite string) string {
	if uri := mirrorFromList(readFile("/etc/apt/sources.list"), suite); uri != "" {
		return uri
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, f := range lists {
		if uri := mirrorFromList(readFile(f), suite); uri != "" {
			return uri
		}
	}
	sources, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range sources {
		if uri := mirrorFromDeb822(readFile(f), suite); uri != "" {
			return uri
		}
	}
	return DefaultMirror
}

func readFile(name string) string {
	data, _ := os.ReadFile(name)
	return string(data)
}

// mirrorFromList parses "deb [options] URI SUITE COMPONENTS..." lines.
func mirrorFromList(text, suite string) string {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		fields = fields[1:]
		if strings.HasPrefix(fields[0], "[") {
			// Skip the options, which may contain spaces: [ arch=amd64 ].
			for len(fields) > 0 && !strings.HasSuffix(fields[0], "]") {
				fields = fields[1:]
			}
			if len(fields) > 0 {
				fields = fields[1:]
			}
		}
		if len(fields) >= 2 && fields[1] == suite {
			return fields[0]
		}
	}
	return ""
}

// mirrorFromDeb822 parses stanzas with Types, URIs and Suites fields.
func mirrorFromDeb822(text, suite string) string {
	for _, stanza := range strings.Split(text, "\n\n") {
		fields := parseControl([]byte(stripComments(stanza)))
		if fields["Enabled"] == "no" || !slices.Contains(strings.Fields(fields["Types"]), "deb") {
			continue
		}
		if slices.Contains(strings.Fields(fields["Suites"]), suite) {
			if uris := strings.Fields(fields["URIs"]); len(uris) > 0 {
				return uris[0]
			}
		}
	}
	return ""
}

func stripComments(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
