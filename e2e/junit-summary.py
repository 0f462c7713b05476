#!/usr/bin/env python3
"""Summarizes e2e.test's JUnit report for hostpath-csi's specs: how many
passed and failed, how many the suite skipped while running (with each
reason), and the names of the failed ones. Specs the focus left out are
not counted. Usage: junit-summary.py REPORT.xml"""
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
    if DRIVER not in name:
        continue
    skipped = case.find("skipped")
    if case.find("failure") is not None or case.find("error") is not None:
        failed.append(name)
    elif skipped is not None:
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
