"""Metric and label names used by PromQL expressions (the dashboard's queries and the alert
rules), for checking them against a live scrape. A small lexer, not a PromQL parser: string
literals, label matchers and range selectors are removed, grouping clauses are collected, and
the identifiers left that are not PromQL functions or keywords are metric names."""

from __future__ import annotations

import re

KEYWORDS = {
    # aggregation operators
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_count", "histogram_sum", "histogram_fraction", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
    "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round", "scalar",
    "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year", "avg_over_time",
    "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
    "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time",
    # binary operators and modifiers
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "by", "without", "on",
    "ignoring", "group_left", "group_right",
    # Grafana's templating function
    "label_values",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w$.:])[A-Za-z_:][\w:]*")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def parse(expr: str) -> tuple[set[str], set[str]]:
    """``(metric names, label names)`` an expression refers to (labels of matchers and of
    ``by``/``on``/... clauses)."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for body in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(body))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    for _, names in _GROUPING.findall(text):
        labels.update(n.strip() for n in names.split(",") if n.strip())
    text = _GROUPING.sub(" ", text)
    # a label_values(metric, label) template query names a label as its last argument
    m = re.match(r"\s*label_values\s*\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$", text)
    if m:
        labels.add(m.group(2))
        text = m.group(1)
    metrics = {t for t in _IDENT.findall(text) if t not in KEYWORDS}
    return metrics, labels


def scrape_index(text: str) -> dict[str, set[str]]:
    """Sample name -> label names seen, from Prometheus exposition ``text``."""
    from prometheus_client.parser import text_string_to_metric_families
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            seen.setdefault(sample.name, set()).update(sample.labels)
    return seen


# labels Prometheus adds to every scraped series, and the histogram bucket label
TARGET_LABELS = {"job", "instance", "le"}


def unknown_names(expr: str, scraped: dict[str, set[str]]) -> list[str]:
    """What ``expr`` names that the scrape does not have: ``metric X`` and ``label X``."""
    metrics, labels = parse(expr)
    problems = [f"metric {name}" for name in sorted(metrics) if name not in scraped]
    known = set(TARGET_LABELS)
    for name in metrics & set(scraped):
        known |= scraped[name]
    problems += [f"label {name}" for name in sorted(labels - known)]
    return problems
