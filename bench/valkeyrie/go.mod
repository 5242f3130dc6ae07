module kvrs/bench/valkeyrie

go 1.26

require github.com/kvtools/valkeyrie v1.0.0
