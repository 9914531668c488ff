"""The client checks' shared bookkeeping: each check prints `ok:` or `FAIL:` with what it got."""
counts = {"passed": 0, "failed": 0}


def check(name, got, want):
    ok = got == want
    counts["passed" if ok else "failed"] += 1
    print(f"{'ok' if ok else 'FAIL'}: {name}: {got!r}" + ("" if ok else f" (expected {want!r})"), flush=True)


def summary(what):
    """Prints the tally and gives the exit code."""
    print(f"{what}: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0
