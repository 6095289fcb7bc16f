"""Studies: a base config, a matrix of dotted keys, seeds and fixed overrides, expanded into runs.

A study is data, validated at the edge like a config: every cell and seed is resolved into a
`RunConfig` before anything runs. No torch here (the sweep engine in `sweep.py` runs the result).

    name: mlp_lr
    base: ../mlp_bn.yaml          # a config path, relative to the study file, or a shipped config name
    matrix: {norm.kind: [none, torch], train.lr: [0.1, 1.0, 3.0]}
    # keys joined by a comma vary together: {train.batch_size,train.lr: [[32, 0.0125], [256, 0.1]]}
    seeds: [0, 1, 2]              # or "0-4", or one integer
    set: {train.epochs: 5}        # fixed overrides for every run (optional)

What the study asks and tests, for `bnbench report` (optional; none of it changes a run): `question`,
`claims`, `published` (the setup the claims were published with) and `figures` (the report's
figures): their schema is specs.py, judged by evidence/claims.py and drawn by evidence/figures.py.
`sequential: {max_seeds: 20}` is the stopping rule of `bnbench sweep --until-decided` (evidence/sequential.py),
which adds seeds beyond `seeds` to the cells of claims still undecided.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from bnbench.config import (
    MAX_NAME_BYTES,
    SHIPPED_CONFIGS,
    RunConfig,
    check_keys,
    config_from_dict,
    config_path,
    flat,
    load_config,
    parse_override,
    parse_yaml,
    shipped_names,
    shipped_or_given,
    shorten,
)
from bnbench.errors import UsageError
from bnbench.naming import cell_name, format_value, short_keys  # noqa: F401 (re-exported)
from bnbench.runs.specs import (
    MAX_SEED,
    matches,
    parse_claims,
    parse_figures,
    parse_published,
    parse_replicate,
    parse_sequential,
)

STUDY_FILE = "study.yaml"
STUDY_KEYS = ("name", "question", "base", "matrix", "seeds", "set", "published", "figures", "claims", "sequential",
              "replicates")  # fmt: skip
MAX_SEEDS = 10_000


def parse_shard(text: str) -> tuple[int, int]:
    """--shard i/N (1 <= i <= N): this machine's part of a study, for SLURM job arrays."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 100_000:
        raise UsageError(f"--shard {shorten(text)}: expected i/N with 1 <= i <= N, e.g. --shard 2/8")
    return int(match[1]), int(match[2])


def in_shard(position: int, shard: tuple[int, int] | None) -> bool:
    """Run number `position` of a study (in its planned order, the same on every machine) belongs to shard
    i/N when position mod N is i - 1: the N shards share no run and together are the study."""
    return shard is None or position % shard[1] == shard[0] - 1


def parse_seeds(value: Any, source: str) -> tuple[int, ...]:
    """0-4, "0,1,2", [0, 1, 2] or 3 -> distinct seeds in 0 .. 2**32 - 1."""
    text = str(value).strip()
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            seeds = [value]
        elif isinstance(value, list):
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise ValueError
            seeds = list(value)
        elif re.fullmatch(r"\d+\s*-\s*\d+", text):
            low, high = (int(v) for v in text.split("-"))
            if high > MAX_SEED or high - low + 1 > MAX_SEEDS:  # checked before a list is built
                raise UsageError(f"{source}: {text[:60]!r}: at most {MAX_SEEDS:,} seeds, each between 0 and {MAX_SEED}")
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(v) for v in text.split(",") if v.strip()]
    except (TypeError, ValueError):
        raise UsageError(f"{source}: expected seeds like 0-4, 0,1,2 or [0, 1, 2], got {text[:60]!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise UsageError(f"{source}: expected distinct seeds between 0 and {MAX_SEED}, got {text[:60]!r}")
    return tuple(seeds)


@dataclass(frozen=True)
class PlannedRun:
    name: str  # the run directory's name inside the study folder
    config: RunConfig
    cell: str


@dataclass(frozen=True)
class Study:
    name: str
    base: dict  # the resolved base config, so a saved study re-runs without its base file
    matrix: tuple[tuple[str, tuple], ...]
    seeds: tuple[int, ...]
    fixed: tuple[tuple[str, Any], ...]
    source: str = field(default="", compare=False)  # where the matrix came from, for messages: a file, --grid
    claims: tuple = field(default=(), compare=False)  # specs.Claim: what the study tests (not what it runs)
    question: str = field(default="", compare=False)
    published: Any = field(default=None, compare=False)  # specs.Published
    figures: tuple = field(default=(), compare=False)  # specs.FigureSpec
    sequential: Any = field(default=None, compare=False)  # specs.Sequential: --until-decided's stopping rule
    replicates: Any = field(default=None, compare=False)  # specs.Replicate: the study this one repeats, changed

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base": self.base,
            "matrix": {k: list(v) for k, v in self.matrix},
            "seeds": list(self.seeds),
            "set": dict(self.fixed),
        } | ({"question": self.question} if self.question else {}) \
          | ({"published": self.published.to_dict()} if self.published else {}) \
          | ({"figures": [f.to_dict() for f in self.figures]} if self.figures else {}) \
          | ({"claims": [c.to_dict() for c in self.claims]} if self.claims else {}) \
          | ({"sequential": self.sequential.to_dict()} if self.sequential else {}) \
          | ({"replicates": self.replicates.to_dict()} if self.replicates else {})  # fmt: skip

    def run_count(self) -> int:
        """Cells x seeds, by arithmetic: nothing is built."""
        count = len(self.seeds)
        for _, values in self.matrix:
            count *= len(values)
        return count

    def cells(self) -> list[tuple[str, dict]]:
        """Each cell's name with its resolved config, flat (the first seed's run)."""
        return [(run.cell, flat(run.config.to_dict())) for run in replace(self, seeds=self.seeds[:1]).runs()]

    def runs(self) -> list[PlannedRun]:
        """Every cell x seed as a validated config; a bad value anywhere is one UsageError."""
        base = config_from_dict(self.base, f"{self.name}: base")
        fixed = [_override(k, v) for k, v in self.fixed]
        from_matrix: set[str] = set()

        def named(text: str) -> str:  # messages name what the user wrote: the --grid or the study file
            if text in from_matrix:
                return f"--grid {text}" if self.source == "--grid" else f"{self.source or self.name}: matrix {text}"
            return f"--set {text}" if self.source == "--grid" else f"{self.source or self.name}: set {text}"

        planned, seen = [], set()
        resolved_cells: dict[str, tuple[str, dict]] = {}  # resolved config -> the first cell with it
        for combination in itertools.product(*(values for _, values in self.matrix)):
            values = {}
            for (key, _), value in zip(self.matrix, combination, strict=True):
                values.update(zip(key.split(","), value, strict=True) if "," in key else {key: value})
            cell = cell_name(values) if values else base.name
            longest = f"{cell}-s{max(self.seeds)}"
            if len(longest.encode()) > MAX_NAME_BYTES:
                raise UsageError(
                    f"study {self.name}: the run name {shorten(longest)!r} is longer than {MAX_NAME_BYTES} bytes; "
                    "use shorter values"
                )
            if cell in seen:
                raise UsageError(f"study {self.name}: two cells are both named {cell!r}; make the values distinct")
            seen.add(cell)
            cell_overrides = [_override(k, v) for k, v in values.items()]
            from_matrix.update(cell_overrides)
            try:
                cfg = load_config(None, fixed + cell_overrides, base=base, named=named)
            except UsageError as exc:
                raise UsageError(f"study {self.name}, cell {cell}: {exc}") from None
            resolved = repr(sorted(flat(cfg.to_dict()).items(), key=lambda item: item[0]))
            if resolved in resolved_cells:  # 1e-5 and 0.00001: two spellings, one run (and its seeds pooled twice)
                other, other_values = resolved_cells[resolved]
                differ = [k for k in values if other_values.get(k) != values[k]] or list(values)
                first, second = (" ".join(_override(k, vals[k]) for k in differ) for vals in (other_values, values))
                where = "--grid" if self.source == "--grid" else f"{self.source or self.name}: matrix"
                raise UsageError(
                    f"study {self.name}: cells {other} and {cell} are one run ({where} {first} and {second} "
                    "resolve to the same config); give each value once"
                )
            resolved_cells[resolved] = (cell, values)
            for seed in self.seeds:
                planned.append(PlannedRun(f"{cell}-s{seed}", cfg.with_seed(seed).with_name(f"{cell}-s{seed}"), cell))
        return planned


def _override(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix('...').strip()}"


def _read(path: Path) -> dict:
    if path.is_dir():
        path = path / STUDY_FILE
        if path.is_symlink():  # a saved study is data someone may have sent: its links are not followed
            raise UsageError(f"{path}: a link; a study folder's study.yaml is read only as a file of its own")
    if not path.is_file():
        raise UsageError(f"{path}: no such study file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable study file ({type(exc).__name__})") from None
    raw = parse_yaml(text, str(path))
    return check_keys(raw, STUDY_KEYS, str(path), f"a study to be a YAML mapping with {', '.join(STUDY_KEYS)}")


def _base_path(base: Any, relative_to: Path) -> Path:
    if not isinstance(base, str) or not base:
        raise UsageError(f"{relative_to}: base: expected a config path or a shipped config name")
    for candidate in (relative_to.parent / base, SHIPPED_CONFIGS / base, SHIPPED_CONFIGS / f"{base}.yaml"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"{relative_to}: base: {base}: no such config (a path relative to the study, or one of configs/)")


def _matrix(raw: Any, source: str) -> tuple[tuple[str, tuple], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: matrix: expected a mapping of dotted keys to lists of values")
    out = []
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise UsageError(f"{source}: matrix.{key}: expected a non-empty list of values")
        keys = [k.strip() for k in str(key).split(",")]
        if "train.seed" in keys:  # a seed grid beside `seeds` would make identical runs counted as independent
            raise UsageError(f"{source}: matrix.{key}: seeds are not a matrix key; list them under seeds")
        for k in keys:
            parse_override(f"{k}=0", f"{source}: matrix.{key}")  # the key exists (values are checked per cell)
        if len(keys) > 1:  # keys that vary together: each value is a list with one item per key
            bad = [v for v in values if not isinstance(v, list) or len(v) != len(keys)]
            if bad or len(set(keys)) != len(keys):
                raise UsageError(
                    f"{source}: matrix.{key}: keys that vary together take lists of {len(keys)} distinct-key "
                    f"values, e.g. [{', '.join('...' for _ in keys)}]; got {str(bad[0] if bad else keys)[:60]}"
                )
            values = [list(v) for v in values]
        out.append((",".join(keys), tuple(values)))
    return tuple(out)


def _fixed(raw: Any, source: str) -> tuple[tuple[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: set: expected a mapping of dotted keys to values")
    return tuple((str(k), v) for k, v in raw.items())


SHIPPED_STUDIES = SHIPPED_CONFIGS / "studies"


def shipped_studies() -> list[str]:
    return shipped_names(SHIPPED_STUDIES)


def study_path(given: Path) -> Path:
    """A study file or folder, or the name of a shipped study (`mlp_lr`) when no such file is here."""
    return shipped_or_given(given, SHIPPED_STUDIES)


def is_study_file(path: Path) -> bool:
    """Whether `path` (or the shipped study of that name) holds a study rather than a config: a mapping
    with a matrix, a base or seeds. Unreadable files are not studies (the config reader says why)."""
    path = study_path(path)
    if path.is_dir():
        return (path / STUDY_FILE).is_file()
    if not path.is_file():
        return False
    try:
        raw = parse_yaml(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, UsageError):
        return False
    return isinstance(raw, dict) and any(k in raw for k in ("matrix", "base", "seeds"))


def load_study(path: Path, extra: list[str] = ()) -> Study:
    """A study file (or shipped study name), or a study folder holding a saved study.yaml; `extra` are
    `--set key=value` overrides added to the study's fixed ones (and saved with it)."""
    path = study_path(path)
    raw = _read(path)
    source = str(path)
    if path.is_dir():  # saved: the base is already a resolved config
        base = raw.get("base")
        if not isinstance(base, dict):
            raise UsageError(f"{path / STUDY_FILE}: base: expected the resolved config")
        # Resolved again: a key added to bnbench since the study was saved takes its default, which is
        # what the saved runs trained with, so it is no difference.
        base = config_from_dict(base, f"{path / STUDY_FILE}: base").to_dict()
    else:
        base = load_config(_base_path(raw.get("base"), path)).to_dict()
    name = raw.get("name", path.stem if not path.is_dir() else path.name)
    check_folder_name(name, f"{source}: name")
    fixed = dict(_fixed(raw.get("set"), source))
    matrix = _matrix(raw.get("matrix"), source)
    if not path.is_dir():  # a saved study re-runs as it was saved
        _check_fixed(matrix, list(fixed), f"{source}: set")
    for text in extra:
        keys, value = parse_override(text)
        _check_fixed(matrix, [".".join(keys)], f"--set {shorten(text)}")
        fixed[".".join(keys)] = value
    question = raw.get("question", "")
    if not isinstance(question, str):
        raise UsageError(f"{source}: question: expected one line of text")
    study = Study(name, base, matrix, parse_seeds(raw.get("seeds", 0), f"{source}: seeds"),
                  tuple(fixed.items()), source=str(path if not path.is_dir() else path / STUDY_FILE),
                  claims=parse_claims(raw.get("claims"), source), question=question.strip(),
                  published=parse_published(raw.get("published"), source),
                  figures=parse_figures(raw.get("figures"), source))  # fmt: skip
    if raw.get("sequential") is not None:
        study = replace(study, sequential=parse_sequential(raw["sequential"], source, study.seeds))
    if raw.get("replicates") is not None:
        study = replace(study, replicates=parse_replicate(raw["replicates"], source))
    check_claim_arms(study, source)
    return study


def check_claim_arms(study: Study, source: str) -> None:
    """Every claim's two arms select runs of this study: a typo in a value is one line now, not an
    inconclusive verdict with no runs after hours of training."""
    if not study.claims:
        return
    cells = study.cells()
    for claim in study.claims:
        for side, wanted in (("compare", claim.compare), ("against", claim.against)):
            shown = ", ".join(f"{k}: {v}" for k, v in wanted)
            hits = [name for name, cell in cells if matches(cell, wanted)]
            if not hits:
                raise UsageError(f"{source}: claim {claim.id}: {side} {{{shown}}} matches no cell of the study")
            if claim.tune is not None:  # one cell per value of the tuned key, and more than one value
                key = claim.tune.key
                values = [repr(cell.get(key)) for _, cell in cells if matches(cell, wanted)]
                if key in dict(wanted):
                    raise UsageError(
                        f"{source}: claim {claim.id}: {side} fixes {key}, which tune chooses; leave it out"
                    )
                if len(set(values)) < 2:
                    raise UsageError(f"{source}: claim {claim.id}: tune: {key} does not vary among the cells of {side} "
                                     f"{{{shown}}}: nothing to choose from")  # fmt: skip
                if len(set(values)) != len(values):
                    raise UsageError(f"{source}: claim {claim.id}: {side} {{{shown}}} matches {len(hits)} cells that "
                                     f"differ in more than {key}; name one cell per value of {key}")  # fmt: skip
                continue
            if len(hits) > 1:  # two runs per seed in one arm: which one counts would be an accident
                named = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
                raise UsageError(f"{source}: claim {claim.id}: {side} {{{shown}}} matches {len(hits)} cells "
                                 f"({named}); name one cell")  # fmt: skip


def study_from_command_line(given: Path, grid: list[str], seeds: str | None, name: str | None,
                            sets: list[str]) -> Study:  # fmt: skip
    """What `bnbench sweep` was given: a saved study folder (re-run as it is), a study file or shipped
    study name (with --set/--epochs), or a config with --grid/--seeds. Mixing the forms is one clear line."""
    if given.is_dir():
        if grid or seeds or name or sets:
            raise UsageError(
                f"{given}: a saved study re-runs as it is; --grid, --seeds, --name, --set, --epochs do not apply"
            )
        return load_study(given)
    if is_study_file(given):
        if grid or seeds is not None:
            raise UsageError(
                f"{given} is a study file: its matrix and seeds are in the file; --grid and --seeds go with a "
                "config (bnbench sweep CONFIG --grid key=v1,v2)"
            )
        study = load_study(given, sets)
        if name is not None:  # the study under another name: another folder (a variant beside the original)
            check_folder_name(name, "--name")
            study = replace(study, name=name)
        return study
    if not grid and seeds is None:
        if study_path(given).is_file() or config_path(given).is_file():
            raise UsageError(
                f"{given} is a config (one run): train it with `bnbench run {given}`, or sweep a grid of it with "
                f"`bnbench sweep {given} --grid train.lr=0.1,1 --seeds 0-2`"
            )
        hint = " or shipped study (`bnbench config list` names them)" if given.parent == Path(".") else ""
        raise UsageError(f"{given}: no such study file{hint}")
    return study_from_options(given, grid, seeds, name, sets)


def study_from_options(config: Path, grid: list[str], seeds: str | None, name: str | None, sets: list[str]) -> Study:
    """`bnbench sweep CONFIG --grid key=v1,v2 --seeds 0-2 --name N --set key=value`."""
    base = load_config(config)
    matrix = []
    for text in grid:
        key, sep, values = text.partition("=")
        keys = [k.strip() for k in key.split(",")]
        key = ",".join(keys)
        if not sep or not all(keys) or not values.strip():
            raise UsageError(f"--grid {text}: expected dotted.key=value1,value2 (e.g. --grid train.lr=0.1,1)")
        for k in keys:
            parse_override(f"{k}=0", f"--grid {text}")  # the key exists (values are checked per cell)
        source = f"--grid {shorten(text)}"
        if values.strip().startswith("["):
            parsed = parse_yaml(values, source)
            items = parsed if isinstance(parsed, list) else [parsed]
            spellings = [_override(key, v).partition("=")[2] for v in items]
        elif len(keys) > 1:  # keys that vary together: one list per cell, as in a study file's matrix
            raise UsageError(
                f"--grid {shorten(text)}: keys that vary together take a YAML list with one list per cell, e.g. "
                f"--grid '{key}=[[{', '.join('...' for _ in keys)}], [{', '.join('...' for _ in keys)}]]'"
            )
        else:
            spellings = [v.strip() for v in values.split(",")]
            items = [parse_yaml(v, source) for v in values.split(",")]
        if set(keys) & {k for known, _ in matrix for k in known.split(",")}:
            raise UsageError(f"--grid {text}: {key} is already a --grid key; give its values in one --grid")
        if "train.seed" in keys:
            raise UsageError(f"--grid {text}: seeds are not a grid key; use --seeds {values.strip()}")
        if len(keys) == 1:
            _check_spellings(key, items, spellings, base, source)
        matrix.append((key, list(items)))
    fixed = []
    for text in sets:
        keys, value = parse_override(text)
        _check_fixed(matrix, [".".join(keys)], f"--set {shorten(text)}")
        fixed.append((".".join(keys), value))
    seed_list = parse_seeds(seeds if seeds is not None else "0", "--seeds")
    study = Study(name or base.name, base.to_dict(), _matrix(dict(matrix), "--grid"), seed_list, tuple(fixed),
                  source="--grid")  # fmt: skip
    check_folder_name(study.name, "--name")
    return study


def _check_fixed(matrix: list | tuple, keys: list[str], source: str) -> None:
    """A fixed override of a key the matrix varies would be silently lost (each cell's value wins): one line."""
    varied = {k for key, _ in matrix for k in key.split(",")}
    for key in keys:
        if key in varied:
            raise UsageError(
                f"{source}: {key} varies in the matrix (each cell's value wins); give its values in one place"
            )


def _check_spellings(key: str, items: list, spellings: list[str], base: RunConfig, source: str) -> None:
    """Two spellings of one value in a --grid (1e-5 and 0.00001) would plan one run twice and pool its seeds
    twice: one line naming both. Values that do not validate alone are left to the per-cell check."""
    first: dict[str, str] = {}
    for item, spelled in zip(items, spellings, strict=True):
        try:
            resolved = flat(load_config(None, [_override(key, item)], base=base).to_dict()).get(key, item)
        except UsageError:
            continue
        if repr(resolved) in first and first[repr(resolved)] != spelled:
            raise UsageError(
                f"{source}: {first[repr(resolved)]} and {spelled} are the same value ({format_value(resolved)}); "
                "give it once"
            )
        first.setdefault(repr(resolved), spelled)


def has_control(name: str) -> bool:
    """NUL, newlines, escapes and other control characters: they break files, tables and terminals."""
    return any(ord(c) < 32 or ord(c) == 127 for c in name)


def check_folder_name(name: object, source: str) -> None:
    """A study's name becomes a folder: no '/', NUL or leading '.', and short enough for any file system."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith(".") or has_control(name):
        raise UsageError(f"{source}: {shorten(repr(name))} cannot be a folder name")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise UsageError(f"{source}: {shorten(repr(name))}: longer than {MAX_NAME_BYTES} bytes")


def saved_study(folder: Path) -> Study | None:
    return load_study(folder) if (folder / STUDY_FILE).is_file() else None


def study_differences(saved: Study, wanted: Study) -> list[str]:
    from bnbench.runs.rundir import differences

    # What a study asks and tests is not what it runs: editing it never makes a study "another one".
    about = ("claims", "question", "published", "figures", "sequential", "replicates")
    return [k for k in differences(saved.to_dict(), wanted.to_dict()) if not k.startswith(about)]


def sequential_changes(saved: Study, wanted: Study) -> list[str]:
    """What `wanted` changes of a saved study that runs under a sequential rule and that its decisions rest
    on: the rule, or a claim's arms, metric, expectation or margin (its words may change). Empty when the
    saved study has no rule."""
    if saved.sequential is None:
        return []
    changed = ["sequential"] if wanted.sequential is not None and wanted.sequential != saved.sequential else []

    def decisive(study: Study) -> dict:
        return {c.id: (c.compare, c.against, c.metric, c.expect, c.margin, c.tune) for c in study.claims}

    before, after = decisive(saved), decisive(wanted)
    return changed + [f"claim {cid}" for cid in sorted(set(before) | set(after)) if before.get(cid) != after.get(cid)]


def dump_study(study: Study) -> str:
    return yaml.safe_dump(study.to_dict(), sort_keys=False)


def run_configs(configs: list[Path], overrides: list[str]) -> list[RunConfig]:
    """Every config of a `bnbench run`, validated with its overrides before anything runs (and before torch
    is imported: a typo costs well under a second); a study file is refused with the command that runs it."""
    loaded = []
    for path in configs:
        if is_study_file(path):
            raise UsageError(f"{path} is a study (a grid of runs): run it with `bnbench sweep {path}`")
        loaded.append(load_config(path, overrides))
    return loaded
