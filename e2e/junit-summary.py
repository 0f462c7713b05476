#!/usr/bin/env python3
"""Summarizes e2e.test's JUnit report for hostpath-csi's specs: how many
passed and failed, how many the suite skipped while running (with each
reason), and the names of the failed ones (suite set-up and tear-down
nodes included). Specs the focus left out are not counted. Exits non-zero
if anything failed or no spec passed. Usage: junit-summary.py REPORT.xml"""
import collections
import sys
import xml.etree.ElementTree as ET

DRIVER = "[Driver: hostpath-csi.dev]"
# What ginkgo writes for a spec it never ran (outside the focus, or skipped
# by the skip expression).
NOT_RUN = "skipped"

passed, failed, reasons = 0, [], collections.Counter()
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    name = case.get("name", "")
    if case.find("failure") is not None or case.find("error") is not None:
        # Failures of [SynchronizedBeforeSuite] and the like count too.
        failed.append(name)
    elif DRIVER not in name:
        continue
    elif (skipped := case.find("skipped")) is not None:
        message = (skipped.get("message") or "").strip()
        if message != NOT_RUN:
            reasons[message.removeprefix("skipped - ")] += 1
    else:
        passed += 1

print(f"{passed} Passed | {len(failed)} Failed | {sum(reasons.values())} Skipped while running")
for reason, count in reasons.most_common():
    print(f"  skipped {count}x: {reason}")
for name in failed:
    print(f"  FAILED: {name}")
sys.exit(1 if failed or passed == 0 else 0)
