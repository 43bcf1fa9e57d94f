"""Prints the speed-up table (vmd_fast.bench.markdown_table) after a benchmark run."""

from vmd_fast.bench import machine_description, markdown_table, ratio_rows


class _Timed:
    def __init__(self, group, impl, bytes_moved):
        self.group, self.impl, self.bytes_moved = group, impl, bytes_moved

    @property
    def name(self):
        return f"{self.group} [{self.impl}]"


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    for device in ("cpu", "cuda"):
        timed, timings = [], {}
        for bench in session.benchmarks:
            info = bench.extra_info
            if info.get("device") != device or not bench.stats:
                continue
            case = _Timed(info["group"], info["impl"], info["bytes_moved"])
            timed.append(case)
            # Cases that do different amounts of work (diagnosis loops) compare time per unit.
            timings[case.name] = bench.stats.median / info.get("work", 1)
        if timed:
            terminalreporter.write_sep("=", f"vmd_fast speed-ups on {machine_description(device)}")
            terminalreporter.write_line(markdown_table(ratio_rows(timings, timed)))

    rates = [(b.extra_info.get("group", ""), b.extra_info["impl"], b.extra_info["gflop_per_second"])
             for b in session.benchmarks if b.stats and "gflop_per_second" in b.extra_info]
    if rates:
        terminalreporter.write_sep("=", "matmul/convolution GFLOP/s on the CPU (torch.utils.flop_counter)")
        for group, impl, rate in rates:
            terminalreporter.write_line(f"{group} [{impl}]: {rate:.1f} GFLOP/s")
