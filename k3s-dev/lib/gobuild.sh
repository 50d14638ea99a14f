# Building Go programs from the Go module proxy. Sourced, never run.
# shellcheck shell=bash

# A throwaway module that requires MODULE@VERSION and pins every replaced
# sibling module of that release to its published version, so that `go build`
# can compile a package whose own go.mod uses local replace directives.
wrapper_module() {
  local dir=$1 module=$2 version=$3 replace_version=$4 gomod
  rm -rf "$dir" && mkdir -p "$dir"
  gomod=$(cd "$dir" && go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || die "could not download $module@$version from the Go module proxy"
  {
    echo "module cloudpillar.local/build"
    echo
    echo "go $(go env GOVERSION | sed 's/^go\([0-9]*\.[0-9]*\).*/\1/')"
    echo
    echo "require $module $version"
    echo
    echo "replace ("
    # Local replaces (`x => ./staging/...` or `x => ../api`) become the
    # module's published release of the same line.
    # Both forms count: a line inside a `replace (...)` block and a single-line
    # `replace x => ./y`; placeholders such as `./FORBIDDEN_DEPENDENCY` are skipped.
    awk '/=> *\.\.?\// && !/FORBIDDEN/ {print ($1 == "replace" ? $2 : $1)}' "$gomod" | sort -u |
      while read -r dep; do echo "	$dep => $dep $replace_version"; done
    echo ")"
  } >"$dir/go.mod"
  printf 'package build\n' >"$dir/doc.go"
}
