"""`compare --where`: a row filter that can only compare, never call.

The language: column names, literals (numbers, quoted text, True/False), comparisons
(`== != < <= > >=`, chained too), `in` / `not in` a list of literals, `and` / `or` /
`not` (or `&` / `|` / `~`, as pandas queries write them) and parentheses. Anything else
(calls, attributes, subscripts, `@` names, arithmetic) is refused with one line naming
it, before anything is evaluated: a shared results table is data, and a filter typed
into a command must not be able to run code, as `DataFrame.query` can.

A number compares numerically with a column that holds numbers, also when the column
was read as text because it holds a word as well (`labels_per_class` holds budgets and
`all`): `labels_per_class == 10` keeps the rows of budget 10, `labels_per_class ==
'all'` the rows of every label. A cell that is not a number never equals a number.
"""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from transfer.errors import TransferError

_COMPARE = {ast.Eq: "eq", ast.NotEq: "ne", ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge"}


def apply(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """The rows of `df` that `where` keeps; TransferError for anything outside the language."""
    return df[mask(df, where)]


def check(where: str) -> None:
    """Refuse a filter outside the language (nothing is evaluated)."""
    _check(_parse(where), where)


def mask(df: pd.DataFrame, where: str) -> pd.Series:
    tree = _parse(where)
    _check(tree, where)  # the whole expression first: nothing is evaluated if any part is refused
    result = _Evaluator(df, where).boolean(tree)
    return pd.Series(np.asarray(result, dtype=bool), index=df.index)


def _parse(where: str) -> ast.AST:
    try:
        tree = ast.parse(where.strip(), mode="eval")
    except SyntaxError as exc:
        if "@" in where:
            _refuse(None, where, "'@' (a Python variable)")
        raise TransferError(f"--where {where!r}: not a valid filter ({exc.msg})") from None
    return tree.body


def _refuse(node: ast.AST | None, where: str, what: str | None = None):
    what = what or type(node).__name__
    raise TransferError(f"--where {where!r}: {what} is not allowed; a filter holds column names, literals, "
                        "comparisons (== != < <= > >=, in, not in), and/or/not and parentheses")


def _check(node: ast.AST, where: str) -> None:
    """Refuse any node outside the language (before evaluating anything)."""
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _check(v, where)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
        _check(node.operand, where)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
        _check(node.left, where)
        _check(node.right, where)
    elif isinstance(node, ast.Compare):
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                    _refuse(right, where, "'in' with anything but a list of literals")
                for item in right.elts:
                    _literal(item, where)
            elif type(op) not in _COMPARE:
                _refuse(op, where, f"the comparison {type(op).__name__}")
            else:
                _operand(right, where)
        _operand(node.left, where)
    else:
        _refuse(node, where, _describe(node))


def _operand(node: ast.AST, where: str) -> None:
    if not isinstance(node, ast.Name):
        _literal(node, where)


def _literal(node: ast.AST, where: str):
    """The value of a literal node (a number, text, True/False, -number); refuse anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    _refuse(node, where, _describe(node))


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return "'@' (a Python variable)"
    kinds = {ast.Call: "a call", ast.Attribute: "an attribute (a.b)", ast.Subscript: "a subscript (a[b])",
             ast.BinOp: "arithmetic", ast.Lambda: "a lambda", ast.Name: "a bare column name (compare it)"}
    for kind, words in kinds.items():
        if isinstance(node, kind):
            return words
    return f"{type(node).__name__}"


class _Evaluator:
    def __init__(self, df: pd.DataFrame, where: str):
        self.df, self.where = df, where

    def boolean(self, node: ast.AST) -> np.ndarray:
        if isinstance(node, ast.BoolOp):
            parts = [self.boolean(v) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = parts[0]
            for p in parts[1:]:
                out = combine(out, p)
            return out
        if isinstance(node, ast.UnaryOp):
            return ~self.boolean(node.operand)
        if isinstance(node, ast.BinOp):
            combine = np.logical_and if isinstance(node.op, ast.BitAnd) else np.logical_or
            return combine(self.boolean(node.left), self.boolean(node.right))
        return self.compare(node)

    def compare(self, node: ast.Compare) -> np.ndarray:
        out = np.ones(len(self.df), dtype=bool)
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                hit = np.zeros(len(self.df), dtype=bool)
                for item in right.elts:
                    hit |= self.pair(left, "eq", item)
                out &= hit if isinstance(op, ast.In) else ~hit
            else:
                out &= self.pair(left, _COMPARE[type(op)], right)
            left = right
        return out

    def value(self, node: ast.AST):
        if isinstance(node, ast.Name):
            if node.id not in self.df.columns:
                raise TransferError(f"--where {self.where!r}: unknown column {node.id!r}. "
                                    f"Available: {', '.join(map(str, self.df.columns))}")
            return self.df[node.id]
        return _literal(node, self.where)

    def pair(self, left: ast.AST, op: str, right: ast.AST) -> np.ndarray:
        a, b = self.value(left), self.value(right)
        if not isinstance(a, pd.Series) and not isinstance(b, pd.Series):
            return np.full(len(self.df), bool(getattr(pd.Series([a]), op)(b).iloc[0]))
        if not isinstance(a, pd.Series):  # literal op column: flip it
            flip = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
            a, b, op = b, a, flip.get(op, op)
        a, b = _comparable(a, b)
        result = getattr(a, op)(b)
        return result.fillna(op == "ne").to_numpy(dtype=bool)


def _comparable(column: pd.Series, other):
    """Both sides in one kind: numbers when either side is a number (text cells that are
    not numbers become missing), True/False as such, else text."""
    if isinstance(other, bool) or (isinstance(other, pd.Series) and pd.api.types.is_bool_dtype(other)):
        return _as_bool(column), other if not isinstance(other, pd.Series) else _as_bool(other)
    if isinstance(other, (int, float)) or (isinstance(other, pd.Series) and pd.api.types.is_numeric_dtype(other)):
        return pd.to_numeric(column, errors="coerce"), other
    if isinstance(other, str) and pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        try:
            return column, float(other)
        except ValueError:
            pass
    if isinstance(other, pd.Series):
        return column.astype("string"), other.astype("string")
    return _as_text(column), other


def _as_text(column: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.map(lambda v: None if pd.isna(v) else _plain(v)).astype("string")
    return column.astype("string")


def _plain(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _as_bool(column: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        return column
    text = column.astype("string").str.strip().str.lower()
    return text.map({"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False})
