"""Where a training step's time goes on XLA: time per compiled HLO op from a `jax.profiler` trace,
grouped by what each fused op computes (convolution, dot, reduce, transpose, elementwise, ...).

`python -m aknet_jax.profile --config=... --ops` prints the table. An op's time is its share of the
step's wall time (a stretch in which k ops run counts 1/k to each), so the ops add up to the step
less the time in which no op ran (dispatch; anything the trace does not show), reported beside.
"""

from __future__ import annotations

import bisect
import collections
import glob
import os
import re
import tempfile
import time

import jax
import ml_collections

from aknet_jax import cost

# The first of these found in a fusion's body names its kind (a fusion with a conv and a reduce
# is a conv); a fusion with none of them is elementwise.
_KINDS = ("convolution", "dot", "select-and-scatter", "reduce-window", "reduce", "scatter",
          "gather", "sort", "concatenate", "transpose", "copy")
# Unfused ops that XLA:CPU hands to Eigen asynchronously (`op_kinds` names fusions otherwise).
_ASYNC = ("convolution", "dot")
_END = "end: "
# An Eigen thread may record an op's end marker after the result is ready: the trace stays open
# this long after the step so that a loaded machine does not lose the last marker.
END_MARKER_WAIT_S = 0.2
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([a-z][\w\-]*)\((.*)")


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (kind, result shape)} of a compiled module's text."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(1)
      bodies[current] = []
    elif current:
      bodies[current].append(line)
  kinds = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    kind = op
    if op in ("fusion", "call", "custom-call"):
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      body = "\n".join(bodies.get(called.group(1), [])) if called else ""
      ops = set(re.findall(r"= \S+ ([a-z][\w\-]*)\(", body))
      kind = next((k for k in _KINDS if k in ops), "elementwise")
      window = re.search(r"convolution\(.*window=\{size=(\S+)", body)
      if window:  # 3x3 = a forward / input-gradient conv; the map's size = a weight gradient.
        kind += f" {window.group(1)}"
    kinds[name] = (kind, shape)
  return kinds


def _op_times(trace_dir: str, names: dict) -> tuple[collections.Counter, float]:
  """({op name: ns of wall time}, ns in which no op ran) of a trace, from its first op's start to
  its last op's end. Each stretch of time is shared equally among the ops running in it, so the
  ops' times add up to the traced wall time less the idle time.

  XLA:CPU runs an unfused convolution or dot on Eigen asynchronously: the op's own event covers
  only the launch, and an 'end: NAME' event marks when the work is done (a stride-2 conv's input
  gradient: ~5 ms of event, ~40 ms of work). Those ops are timed from start to that marker.
  """
  files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  data = jax.profiler.ProfileData.from_file(files[0])
  events, done = [], collections.defaultdict(list)
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in names:
          events.append((event.start_ns, event.start_ns + event.duration_ns, event.name))
        elif event.name.startswith(_END):
          done[event.name[len(_END):]].append(event.start_ns)
  for marks in done.values():
    marks.sort()
  edges = []  # (time, +1 start / -1 end, event index)
  for i, (start, end, name) in enumerate(events):
    if names[name][0] in _ASYNC and done.get(name):
      j = bisect.bisect_left(done[name], start)
      if j < len(done[name]):
        end = max(end, done[name][j])
    edges += [(start, 1, i), (end, -1, i)]
  edges.sort(key=lambda e: (e[0], e[1]))  # Ends before starts at the same instant.
  times, running, idle, last = collections.Counter(), set(), 0, None
  for t, kind, i in edges:
    if last is not None and t > last:
      if running:
        for j in running:
          times[events[j][2]] += (t - last) / len(running)
      else:
        idle += t - last
    last = t
    if kind > 0:
      running.add(i)
    else:
      running.discard(i)
  return times, idle


def profile_train_ops(config: ml_collections.ConfigDict, kind: str, batch: int, *,
                      top: int = 20) -> dict:
  """{'total_ms', 'by_kind': [(kind, ms)], 'top': [(op, kind, shape, ms)]} of one training step."""
  p_step, state, batch_arrays, _ = cost.train_step_program(config, kind, batch)
  names = op_kinds(p_step.lower(state, batch_arrays).compile().as_text())
  for _ in range(2):  # Compile, then one untimed step.
    state, _ = p_step(state, batch_arrays)
    jax.block_until_ready(state)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      state, _ = p_step(state, batch_arrays)
      jax.block_until_ready(state)
      time.sleep(END_MARKER_WAIT_S)
    times, idle_ns = _op_times(trace_dir, names)
  if not times:
    raise ValueError("the profiler trace holds no XLA op events (this backend does not trace ops)")
  by_kind = collections.Counter()
  for name, ns in times.items():
    by_kind[names[name][0].split(" ")[0]] += ns
  return {"total_ms": sum(times.values()) / 1e6, "idle_ms": idle_ns / 1e6,
          "load_average": os.getloadavg(),
          "by_kind": [(k, ns / 1e6) for k, ns in by_kind.most_common()],
          "top": [(n, *names[n], ns / 1e6) for n, ns in times.most_common(top)]}


def format_train_ops(report: dict) -> str:
  """Markdown tables of a `profile_train_ops` report."""
  total = report["total_ms"]
  lines = [f"Op time of one training step: {total:.0f} ms of wall time shared among the ops "
           f"running; {report['idle_ms']:.0f} ms of the step ran no op (load "
           f"average {', '.join(f'{x:.2f}' for x in report['load_average'])}).", "",
           "| op kind | ms | share |", "|---|---:|---:|"]
  lines += [f"| {k} | {ms:.0f} | {100 * ms / total:.1f} % |" for k, ms in report["by_kind"]]
  lines += ["", "| op | kind | result shape | ms |", "|---|---|---|---:|"]
  lines += [f"| {n} | {k} | `{s[:48]}` | {ms:.1f} |" for n, k, s, ms in report["top"]]
  return "\n".join(lines)
