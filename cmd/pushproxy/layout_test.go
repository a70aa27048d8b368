package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeLayoutMatchesTheTree: the README's layout paragraph names every Go package of the
// module (and clients/js), and every folder it names exists.
func TestReadmeLayoutMatchesTheTree(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "\nLayout: ")
	if start < 0 {
		t.Fatal(`the README has no "Layout: " paragraph`)
	}
	para := readme[start+1:]
	if end := strings.Index(para, "\n\n"); end >= 0 {
		para = para[:end]
	}
	para = strings.Join(strings.Fields(para), " ")

	named := map[string]bool{}
	for _, m := range regexp.MustCompile("`([a-z0-9_./-]+)`").FindAllStringSubmatch(para, -1) {
		// Folders are written with a slash: "api/", "internal/seal".
		if strings.Contains(m[1], "/") && !strings.HasSuffix(m[1], ".go") {
			named[strings.TrimSuffix(m[1], "/")] = true
		}
	}

	root := "../.."
	var pkgs []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			name := d.Name()
			if rel != "." && (strings.HasPrefix(name, ".") || name == "node_modules" || name == "testdata" || name == "dist" || name == "bin" || name == "pushproxy-data") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			dir := filepath.ToSlash(filepath.Dir(rel))
			if dir != "." && (len(pkgs) == 0 || pkgs[len(pkgs)-1] != dir) {
				pkgs = append(pkgs, dir)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pkgs = append(pkgs, "clients/js")
	for _, p := range pkgs {
		if !named[p] {
			t.Errorf("the README's layout paragraph does not name %s", p)
		}
	}
	for p := range named {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("the README's layout paragraph names %s, which does not exist", p)
		}
	}
}
