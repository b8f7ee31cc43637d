#!/usr/bin/env bash
# Mutation check: every deliberate bug in tests/faults/mutants/*.patch must make a test fail.
#
# For each patch: a throwaway worktree of HEAD (/tmp/mutant-<name>), the patch applied there,
# the test selection run there with the repo's venv (PYTHONPATH points at the worktree, so its
# `bridge` is imported rather than the editable install's /work/main copy), the worktree removed.
# A mutant is KILLED when a test fails (the first failing test is named) and SURVIVED when all
# pass. Exit status is non-zero when a mutant survived or could not be tested.
#
# Usage: scripts/mutants.sh [pytest arguments selecting tests]
#   default selection: tests/faults tests/test_sender.py tests/test_service_recovery.py
#                      tests/test_cli.py tests/cdc/test_source_processes.py
# Environment: MUTANTS=name,name (only these), MUTANT_LOGS=dir (pytest logs; default a temp dir),
#              PYTHON (default <repo>/.venv/bin/python).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
patches_dir=$repo/tests/faults/mutants
if (($# > 0)); then
    tests=("$@")
else
    tests=(tests/faults tests/test_sender.py tests/test_service_recovery.py tests/test_cli.py
        tests/cdc/test_source_processes.py)
fi
logs=${MUTANT_LOGS:-$(mktemp -d /tmp/mutant-logs.XXXXXX)}
mkdir -p "$logs"

current_tree=""

remove_tree() {
    local tree=$1
    if git -C "$repo" worktree list --porcelain | grep -qx "worktree $tree"; then
        git -C "$repo" worktree remove --force "$tree"
    fi
    rm -rf "$tree"
    git -C "$repo" worktree prune
}

cleanup() {
    if [[ -n $current_tree ]]; then
        remove_tree "$current_tree"
    fi
}
trap cleanup EXIT

names=()
results=()
firsts=()

record() {  # name result first-failing-test
    names+=("$1")
    results+=("$2")
    firsts+=("$3")
    printf '  -> %s %s\n' "$2" "$3"
}

run_mutant() {
    local name=$1 patch=$2
    local tree=/tmp/mutant-$name
    local log=$logs/$name.log
    local started=$SECONDS

    echo "== $name"
    remove_tree "$tree"  # left over from an interrupted run
    current_tree=$tree
    git -C "$repo" worktree add --quiet --detach "$tree" HEAD
    if ! git -C "$tree" apply "$patch"; then
        record "$name" ERROR "(the patch does not apply to HEAD)"
        remove_tree "$tree"
        current_tree=""
        return
    fi

    # The worktree's code must be what runs, not the editable install's.
    local imported
    imported=$(cd "$tree" && PYTHONPATH=$tree "$python" -c 'import bridge; print(bridge.__file__)')
    echo "   bridge imported from $imported"
    if [[ $imported != "$tree/"* ]]; then
        record "$name" ERROR "(bridge imported from $imported, not the worktree)"
        remove_tree "$tree"
        current_tree=""
        return
    fi

    local rc=0
    (
        cd "$tree"
        PYTHONPATH=$tree${PYTHONPATH:+:$PYTHONPATH} \
            "$python" -m pytest -x -q -p no:cacheprovider -rfE "${tests[@]}"
    ) >"$log" 2>&1 || rc=$?

    local first
    first=$(grep -m1 -E '^(FAILED|ERROR) [^ ]*::' "$log" | awk '{print $2}' || true)
    case $rc in
        0) record "$name" SURVIVED "" ;;
        1) record "$name" KILLED "${first:-(see $log)}" ;;
        *) record "$name" ERROR "(pytest exit $rc${first:+, $first}; see $log)" ;;
    esac
    echo "   $((SECONDS - started)) s, log: $log"

    remove_tree "$tree"
    current_tree=""
}

shopt -s nullglob
patches=("$patches_dir"/*.patch)
if ((${#patches[@]} == 0)); then
    echo "no patches in $patches_dir" >&2
    exit 2
fi

echo "tests: ${tests[*]}"
for patch in "${patches[@]}"; do
    name=$(basename "$patch" .patch)
    if [[ -n ${MUTANTS:-} && ",$MUTANTS," != *",$name,"* ]]; then
        continue
    fi
    run_mutant "$name" "$patch"
done

echo
echo "| mutant | result | first failing test |"
echo "|---|---|---|"
status=0
for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${results[$i]} | ${firsts[$i]} |"
    if [[ ${results[$i]} != KILLED ]]; then
        status=1
    fi
done
exit $status
