import argparse

from bench import common, report, run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="callpull benchmarks (bench/README.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="run the suite and write bench/results/")
    go.add_argument("--profile", choices=sorted(run.PROFILES), default="quick")
    go.add_argument("--only", default="", help="comma-separated subset: ring,fcm,apns,webhook")
    go.add_argument("--configs", default="", help="comma-separated configuration names of the profile to keep")
    go.add_argument("--sockets", default="", help="comma-separated socket counts instead of the profile's")
    go.add_argument("--rates", default="", help="comma-separated ring rates instead of the profile's")
    sub.add_parser("profile", help="py-spy the ring path once; writes bench/results/profile.md")
    mem = sub.add_parser("memory", help="server RSS per idle authenticated socket (bench/memory.py)")
    mem.add_argument("--sockets", default="1000,5000", help="comma-separated socket counts")
    mem.add_argument("--layers", default="memory,redis", help="comma-separated channel layers: memory,redis")
    mem.add_argument("--deflate", default="off,on", help="comma-separated: off,on")
    mem.add_argument("--variants", default="default", help="';'-separated variants to compare, each extra server "
                     "options and NAME=value settings, e.g. 'default;--ws websockets;PRESENCE_STALE_SECONDS=120' "
                     "(default = none)")
    mem.add_argument("--launcher", choices=["serve", "uvicorn"], default="serve",
                     help="manage.py serve (default) or the ring benchmark's uvicorn command line")
    mem.add_argument("--repeat", type=int, default=3)
    mem.add_argument("--warmup", type=int, default=50, help="sockets opened before the marginal baseline")
    mem.add_argument("--trace", action="store_true", help="tracemalloc + gc type counts in the server")
    mem.add_argument("--out", default="", help="write samples and medians as JSON here")
    from bench import soak
    soak.add_arguments(sub.add_parser("soak", help="minutes of calls with random faults; writes bench/results/soak.*"))
    from bench import fcmring
    fcmring.add_arguments(sub.add_parser("fcmring", help="ring report latency with FCM (or --push apns: APNs) "
                                         "healthy, slow and failing; writes bench/results/fcm-ring.* (apns-ring.*)"))
    fan = sub.add_parser("apns", help="APNs fan-out, ours vs django-push-notifications, alone, under two conditions "
                         "(answers delayed; answers and connection set-up delayed); writes bench/results/apns.* "
                         "(`run` puts the same table in latest.*)")
    fan.add_argument("--sizes", default="100,1000", help="comma-separated token counts")
    fan.add_argument("--repeats", type=int, default=3)
    fan.add_argument("--latency-ms", type=float, default=20, help="the local APNs server's delay of every answer")
    fan.add_argument("--connect-latency-ms", type=float, default=None,
                     help="condition (b): the delay of every new connection's handshake (default: --latency-ms, "
                     "one round trip; TCP's is not modelled); above 0")
    fan.add_argument("--results", default="", help="the directory to write apns.* (apns-profile.md) in "
                     "instead of bench/results/")
    fan.add_argument("--profile", action="store_true", help="ours alone under py-spy, answers delayed only; "
                     "writes bench/results/apns-profile.md instead")
    again = sub.add_parser("report", help="rewrite latest.md/plots from a raw results file")
    again.add_argument("raw", nargs="+", help="one or more raw files; several are merged (ring cells and memory "
                       "rows appended, FCM, APNs and webhook from the last file that has them)")
    args = parser.parse_args()
    if args.command == "run":
        overrides = {"configs": [c.strip() for c in args.configs.split(",") if c.strip()],
                     "sockets": [int(x) for x in args.sockets.split(",") if x],
                     "rates": [float(x) for x in args.rates.split(",") if x]}
        run.run(args.profile, set(filter(None, args.only.split(","))) or None, overrides)
    elif args.command == "memory":
        from pathlib import Path

        from bench import memory
        memory.run(sockets=[int(x) for x in args.sockets.split(",") if x], layers=args.layers.split(","),
                   deflate=[x == "on" for x in args.deflate.split(",")],
                   variants=[v.strip() for v in args.variants.split(";") if v.strip()], launcher=args.launcher,
                   repeat=args.repeat, warmup=args.warmup, trace=args.trace,
                   out=Path(args.out) if args.out else None)
    elif args.command == "soak":
        raise SystemExit(soak.command(args))
    elif args.command == "fcmring":
        raise SystemExit(fcmring.command(args))
    elif args.command == "apns":
        from pathlib import Path

        if args.connect_latency_ms is not None and args.connect_latency_ms <= 0:
            fan.error("--connect-latency-ms must be above 0 (condition (a) is the one without it)")
        path = run.run_apns_alone([int(x) for x in args.sizes.split(",") if x], args.repeats, args.latency_ms,
                                  args.connect_latency_ms, results_dir=Path(args.results or common.RESULTS),
                                  profile=args.profile)
        print(path.read_text())
    elif args.command == "profile":
        from bench import profile
        profile.run()
    else:
        import json
        from pathlib import Path
        merged = None
        for name in args.raw:
            data = json.loads(Path(name).read_text())
            if merged is None:
                merged = data
                continue
            merged["ring"] += data.get("ring", [])
            merged["memory"] += data.get("memory", [])
            merged["fcm"] = data.get("fcm") or merged.get("fcm")
            merged["apns"] = data.get("apns") or merged.get("apns")
            merged["webhook"] = data.get("webhook") or merged.get("webhook")
            merged["meta"]["merged_from"] = merged["meta"].get("merged_from", [args.raw[0]]) + [name]
            merged["meta"].setdefault("commands", [merged["meta"]["command"]]).append(data["meta"]["command"])
            merged["meta"]["load_end"] = data["meta"].get("load_end")
        if merged["meta"].get("commands"):
            merged["meta"]["command"] = " ; ".join(
                [*merged["meta"]["commands"], ".venv/bin/python -m bench report " + " ".join(args.raw)])
            merged["meta"]["completed"] = None  # each piece says what it measured
        report.write(merged, Path(args.raw[0]).stem.split("-")[0])


if __name__ == "__main__":
    main()
