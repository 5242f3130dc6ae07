# extract-directives.awk: print the `exclude` lines and the non-local `replace` lines of a go.mod,
# one directive per line, ready to append to a wrapper module's go.mod.
# Local replaces (`=> ./api`, `=> ../x`) are skipped: in the wrapper, the published sub-module
# versions that the go.mod `require`s take their place.
function emit(kind, body,   parts, tgt) {
  if (kind == "replace") { split(body, parts, "=>"); tgt = parts[2]; gsub(/^[ \t]+/, "", tgt)
                           if (tgt ~ /^\.\.?\//) return }
  print kind " " body
}
{ sub(/\/\/.*/, "") }
/^(replace|exclude)[ \t]*\([ \t]*$/ { block = $1; next }
block != "" && /^[ \t]*\)[ \t]*$/   { block = ""; next }
block != "" { l = $0; gsub(/^[ \t]+|[ \t]+$/, "", l); if (l != "") emit(block, l); next }
/^(replace|exclude)[ \t]/ { k = $1; l = $0; sub(/^(replace|exclude)[ \t]+/, "", l); gsub(/[ \t]+$/, "", l); emit(k, l) }
