"""Write a tiny E5-V-shaped LLaVA-NeXT checkpoint to a directory (offline, deterministic).

    python scripts/build_tiny_model.py DIR [--legacy] [--real-geometry] [--real-vocab]

Use it as `--model DIR` anywhere a model is asked for. Rankings it gives are not meaningful:
it has random weights. See e5v_search/testing.py for what it reproduces.
"""

import argparse

from e5v_search.testing import build_tiny_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory")
    parser.add_argument("--legacy", action="store_true", help="with the real checkpoint's traps")
    parser.add_argument("--real-geometry", action="store_true", help="336-px crops, real pinpoints")
    parser.add_argument("--real-vocab", action="store_true", help="Llama-3's 128,256-token vocab")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_tiny_checkpoint(
        args.directory,
        legacy=args.legacy,
        real_geometry=args.real_geometry,
        real_vocab=args.real_vocab,
        hidden_size=args.hidden_size,
        seed=args.seed,
    )
    print(path)


if __name__ == "__main__":
    main()
