#!/usr/bin/env bash
# Runs the backend benchmarks next to their primitive floors and prints the
# ratio of each operation to its floor (median of COUNT runs).
#
#   bash scripts/bench.sh            # COUNT=5 BENCHTIME=2000x by default
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
COUNT="${COUNT:-5}"
BENCHTIME="${BENCHTIME:-2000x}"
out=$(mktemp)
go test -run '^$' -bench . -benchmem -count "$COUNT" -benchtime "$BENCHTIME" ./backends/ | tee "$out" | grep -E '^(goos|goarch|cpu)' || true
awk '
/^Benchmark/ {
	name = $1; sub(/-[0-9]+$/, "", name)
	n[name]++; v[name, n[name]] = $3
	for (i = 4; i <= NF; i++) if ($(i) == "allocs/op") allocs[name] = $(i-1)
}
function median(name,   k, i, j, t, a) {
	k = n[name]
	for (i = 1; i <= k; i++) a[i] = v[name, i]
	for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return a[int((k + 1) / 2)]
}
END {
	split("twomemo oldmemo", kinds, " ")
	printf "%-28s %-8s %12s %12s %7s %7s\n", "operation", "backend", "ns/op", "floor ns/op", "ratio", "allocs"
	ops["EncryptKeyMaterial"] = "FloorPerDevice/%s"
	ops["DecryptSteady"] = "FloorDecrypt"
	ops["DecryptRatchetStep"] = "FloorRatchetStep"
	ops["BuildSessionActive"] = "FloorBuildSessionActive"
	ops["BuildSessionPassive"] = "FloorBuildSessionPassive"
	ops["EncryptPayload1KiB"] = "FloorPayload1KiB/%s"
	split("EncryptKeyMaterial DecryptSteady DecryptRatchetStep BuildSessionActive BuildSessionPassive EncryptPayload1KiB", order, " ")
	for (o = 1; o <= 6; o++) {
		op = order[o]
		for (k = 1; k <= 2; k++) {
			b = "Benchmark" op "/" kinds[k]
			f = "Benchmark" sprintf(ops[op], kinds[k])
			if (!(b in n) || !(f in n)) continue
			m = median(b); fm = median(f)
			printf "%-28s %-8s %12.0f %12.0f %7.2f %7s\n", op, kinds[k], m, fm, m / fm, allocs[b]
		}
	}
}' "$out"
rm -f "$out"
