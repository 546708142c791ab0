"""Tiny generated stand-ins for the public data sets, written in exactly their published layouts (file names,
folders, delimiters, headers, column order, value formats): never copied data, random values only.

Every writer takes the folder to write and returns what a test needs to know about the rows it wrote.
"""

import gzip
import os
from typing import Dict, List

import numpy as np

CRITEO_INT = [f"I{i}" for i in range(1, 14)]
CRITEO_CAT = [f"C{i}" for i in range(1, 27)]
AVAZU_COLUMNS = (["id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                  "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                  "device_conn_type"] + [f"C{i}" for i in range(14, 22)])
KUAIRAND_LOG = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow",
                "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms",
                "profile_stay_time", "comment_stay_time", "is_profile_enter", "is_rand", "tab"]
KUAIRAND_USER = (["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                  "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
                  "friend_user_num", "friend_user_num_range", "register_days", "register_days_range"]
                 + [f"onehot_feat{i}" for i in range(18)])
ALICCP_SPARSE = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
                 "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14"]
ALICCP_DENSE = ["D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853"]
CENSUS_WORDS = ["Not in universe", "Private", "Self-employed-not incorporated", "Local government"]
TENREC_COLUMNS = ["user_id", "item_id", "click", "follow", "like", "share", "video_category", "watching_times",
                  "gender", "age"]


def _write(path: str, lines: List[str], compress: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "".join(line + "\n" for line in lines)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def _funnel(rng: np.random.Generator, n: int, p: float = 0.3, q: float = 0.4):
    first = (rng.random(n) < p).astype(int)
    return first, first * (rng.random(n) < q).astype(int)


def write_criteo(root: str, rows: int = 300, seed: int = 0) -> Dict[str, int]:
    """train.txt: label, I1-I13 (integers, some empty, I2 down to -3), C1-C26 (8-hex-digit hashes, some empty);
    tab-separated, no header. Returns the row count and the lowest I2."""
    rng = np.random.default_rng(seed)
    hashes = [f"{h:08x}" for h in rng.integers(0, 2**32, 30)]
    lines, low = [], 0
    for _ in range(rows):
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(0, 500, 13)]
        ints[1] = str(int(rng.integers(-3, 50)))
        low = min(low, int(ints[1]))
        cats = [hashes[int(rng.integers(0, 30))] if rng.random() > 0.05 else "" for _ in range(26)]
        lines.append("\t".join([str(int(rng.random() < 0.25))] + ints + cats))
    _write(os.path.join(root, "train.txt"), lines)
    return {"rows": rows, "lowest_I2": low}


def write_avazu(root: str, rows: int = 300, seed: int = 0) -> Dict[str, int]:
    """train.gz (as Kaggle ships it): CSV with header; id is an unsigned 64-bit number, hour is YYMMDDHH."""
    rng = np.random.default_rng(seed)
    lines = [",".join(AVAZU_COLUMNS)]
    for _ in range(rows):
        hour = f"1410{int(rng.integers(21, 31)):02d}{int(rng.integers(0, 24)):02d}"
        cells = [str(int(rng.integers(0, 2**62)) * 4 + 3), str(int(rng.random() < 0.3)), hour]
        cells += [str(int(rng.integers(1000, 1006))), str(int(rng.integers(0, 3)))]
        cells += [f"{int(rng.integers(0, 12)):08x}" for _ in range(9)]
        cells += [str(int(rng.integers(0, 5))), str(int(rng.integers(0, 4)))]
        cells += [str(int(rng.integers(15000, 15010))) for _ in range(8)]
        lines.append(",".join(cells))
    _write(os.path.join(root, "train.gz"), lines, compress=True)
    return {"rows": rows}


def write_movielens_1m(root: str, users: int = 30, movies: int = 40, ratings: int = 400,
                       seed: int = 0) -> Dict[str, int]:
    """ratings.dat, users.dat, movies.dat: '::'-separated, no header; movies.dat in latin-1 with '|' genres and
    titles holding quotes and commas."""
    rng = np.random.default_rng(seed)
    _write(os.path.join(root, "users.dat"), [
        f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::{10000 + u * 7}"
        for u in range(1, users + 1)])
    genres = ["Action", "Children's", "Comedy", "Drama", "Film-Noir", "Sci-Fi"]
    with open(os.path.join(root, "movies.dat"), "w", encoding="latin-1") as f:
        for m in range(1, movies + 1):
            picked = "|".join(sorted(set(genres[int(g)] for g in rng.integers(0, len(genres), 1 + m % 3))))
            f.write(f'{m}::"Caf\xe9, the Movie" {m} ({1950 + m})::{picked}\n')
    _write(os.path.join(root, "ratings.dat"), [
        f"{int(rng.integers(1, users + 1))}::{int(rng.integers(1, movies + 1))}::{int(rng.integers(1, 6))}::"
        f"{978300000 + i * 60}" for i in range(ratings)])
    return {"ratings": ratings}


def write_movielens_100k(root: str, users: int = 20, movies: int = 30, ratings: int = 200,
                         seed: int = 0) -> Dict[str, int]:
    """u.data (tab-separated), u.user and u.item ('|'-separated, u.item in latin-1), as in ml-100k.zip."""
    rng = np.random.default_rng(seed)
    _write(os.path.join(root, "u.data"), [
        f"{int(rng.integers(1, users + 1))}\t{int(rng.integers(1, movies + 1))}\t{int(rng.integers(1, 6))}\t"
        f"{874724710 + i}" for i in range(ratings)])
    _write(os.path.join(root, "u.user"), [f"{u}|{18 + u}|{'MF'[u % 2]}|student|{55100 + u}"
                                          for u in range(1, users + 1)])
    with open(os.path.join(root, "u.item"), "w", encoding="latin-1") as f:
        for m in range(1, movies + 1):
            flags = "|".join(str(int(m % 19 == g)) for g in range(19))
            f.write(f"{m}|Caf\xe9 {m} (1995)|01-Jan-1995||http://example.invalid/{m}|{flags}\n")
    return {"ratings": ratings}


def write_kuairand(root: str, users: int = 20, rows: int = 300, seed: int = 0) -> Dict[str, int]:
    """KuaiRand-Pure (the range columns quoted, as pandas writes them): data/log_standard_4_08_to_4_21_pure.csv,
    data/log_standard_4_22_to_5_08_pure.csv,
    data/log_random_4_22_to_5_08_pure.csv and data/user_features_pure.csv, CSV with header. tab takes values
    0..14; returns the rows of each log and how many of them are in the five kept tabs."""
    rng = np.random.default_rng(seed)
    out: Dict[str, int] = {}
    for name, day0, n in (("log_standard_4_08_to_4_21_pure", 20220408, rows),
                          ("log_standard_4_22_to_5_08_pure", 20220422, rows // 2),
                          ("log_random_4_22_to_5_08_pure", 20220422, rows // 4)):
        tabs = rng.choice([0, 1, 2, 4, 6, 3, 5, 7, 9, 14], size=n, p=[.3, .2, .1, .1, .1, .05, .05, .05, .03, .02])
        click, like = _funnel(rng, n)
        lines = [",".join(KUAIRAND_LOG)]
        for i in range(n):
            t = 1649347200000 + (day0 - 20220408) * 86400000 + i * 60000
            lines.append(",".join(str(v) for v in [
                int(rng.integers(0, users)), int(rng.integers(0, 50)), day0 + i * 10 // n, f"{i % 24:02d}00", t,
                click[i], like[i], 0, 0, 0, 0, int(rng.random() < 0.3), int(rng.integers(0, 60000)),
                int(rng.integers(1000, 90000)), 0, 0, 0, int("random" in name), tabs[i]]))
        _write(os.path.join(root, "data", f"{name}.csv"), lines)
        out[name] = n
        out[name + ":kept"] = int(np.isin(tabs, [0, 1, 2, 4, 6]).sum())
    lines = [",".join(KUAIRAND_USER)]
    for u in range(users):
        lines.append(",".join(str(v) for v in [
            u, ["high_active", "full_active", "middle_active", "UNKNOWN"][u % 4], 0, 0, u % 2, u * 3,
            "\"(0,10]\"", u * 5, "\"[1,10)\"", u, "\"[1,5)\"", 100 + u, "60-90"]
            + [int(x) for x in rng.integers(0, 5, 18)]))
    _write(os.path.join(root, "data", "user_features_pure.csv"), lines)
    return out


def write_aliccp(root: str, rows: int = 300, seed: int = 0, suffix: str = "_sample") -> Dict[str, int]:
    """torch-rechub's pre-processed Ali-CCP: ali_ccp_{train,val,test}{suffix}.csv with click, purchase, the
    sparse fields by id and the dense D* columns."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", rows), ("val", rows // 3), ("test", rows // 3)):
        click, purchase = _funnel(rng, n)
        header = ["click", "purchase"] + ALICCP_SPARSE + ALICCP_DENSE
        lines = [",".join(header)]
        for i in range(n):
            sparse = [int(rng.integers(0, 4 if c == "301" else 40)) for c in ALICCP_SPARSE]
            dense = [round(float(x), 4) for x in rng.random(len(ALICCP_DENSE))]
            lines.append(",".join(str(v) for v in [click[i], purchase[i]] + sparse + dense))
        _write(os.path.join(root, f"ali_ccp_{split}{suffix}.csv"), lines)
        out[split] = n
    return out


def write_aliexpress(root: str, countries=("NL", "ES", "FR", "US"), rows: int = 120,
                     seed: int = 0) -> Dict[str, int]:
    """AliExpress_XX/train.csv and test.csv per country: search_id, categorical_1..16, numerical_1..63, click,
    conversion (the MTReclib / AITM release)."""
    rng = np.random.default_rng(seed)
    header = (["search_id"] + [f"categorical_{i}" for i in range(1, 17)] + [f"numerical_{i}" for i in range(1, 64)]
              + ["click", "conversion"])
    out = {}
    for country in countries:
        for split, n in (("train", rows), ("test", rows // 3)):
            click, conversion = _funnel(rng, n)
            lines = [",".join(header)]
            for i in range(n):
                cells = ([int(rng.integers(0, 50))] + [int(x) for x in rng.integers(0, 30, 16)]
                         + [round(float(x), 5) for x in rng.random(63)] + [click[i], conversion[i]])
                lines.append(",".join(str(v) for v in cells))
            _write(os.path.join(root, f"AliExpress_{country}", f"{split}.csv"), lines)
            out[f"{country}/{split}"] = n
    return out


def write_census_income(root: str, rows: int = 300, seed: int = 0) -> Dict[str, int]:
    """census-income.data and census-income.test (UCI KDD): 42 fields separated by ', ', no header; the last is
    '- 50000.' or '50000+.'; marital status among them. Returns the positives of both tasks in the data file."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("census-income.data", rows), ("census-income.test", rows // 2)):
        lines, rich, single = [], 0, 0
        for _ in range(n):
            marital = ["Never married", "Married-civilian spouse present", "Divorced", "Widowed"][int(rng.integers(4))]
            income = "50000+." if rng.random() < 0.2 else "- 50000."
            rich, single = rich + (income == "50000+."), single + (marital == "Never married")
            cells = [str(int(rng.integers(0, 90)))]
            for k in range(1, 41):
                if k == 7:
                    cells.append(marital)
                elif k in (5, 16, 17, 18, 24, 30, 39, 40):  # numbers (wage, gains, losses, dividends, weight, ...)
                    cells.append(f"{rng.random() * 1000:.2f}" if k == 24 else str(int(rng.integers(0, 52))))
                else:
                    cells.append(CENSUS_WORDS[int(rng.integers(len(CENSUS_WORDS)))])
            lines.append(", ".join(cells + [income]))
        _write(os.path.join(root, name), lines)
        out[name] = n
        out[name + ":income"], out[name + ":never_married"] = rich, single
    return out


def write_tenrec(root: str, rows: int = 300, seed: int = 0) -> Dict[str, int]:
    """QK-video.csv and QB-video.csv: CSV with header user_id, item_id, click, follow, like, share,
    video_category, watching_times, gender, age."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("QK-video", rows), ("QB-video", rows // 2)):
        click, like = _funnel(rng, n)
        lines = [",".join(TENREC_COLUMNS)]
        for i in range(n):
            lines.append(",".join(str(v) for v in [
                int(rng.integers(0, 40)), int(rng.integers(0, 60)), click[i], 0, like[i], 0,
                int(rng.integers(0, 10)), int(rng.integers(0, 5)), int(rng.integers(0, 3)), int(rng.integers(0, 8))]))
        _write(os.path.join(root, f"{name}.csv"), lines)
        out[name] = n
    return out
