"""JSON Schema's regular expressions: ECMA-262 patterns, with the ``u`` flag, on RE2.

JSON Schema says patterns follow ECMA-262, and its test suite reads them with the
``u`` flag. Python's ``re``, RE2 and ``regex`` each read the same text another way:
``\\s`` is ASCII-only in RE2 and Unicode's White_Space in ``regex`` (ECMA-262: the
space separators, the line terminators and U+FEFF), ``\\d`` and ``\\w`` are Unicode in
``regex`` (ECMA-262: ASCII), ``.`` stops only at ``\\n`` (ECMA-262: at ``\\r``, U+2028 and
U+2029 too), ``$`` matches before a final newline in ``regex``, and ``\\cJ``,
``\\u{1F600}``, ``\\p{Letter}`` or ``(?<name>...)`` are refused by one or the other.

:func:`compiled` therefore translates a pattern into an equivalent one before compiling
it: every class escape and ``.`` becomes an explicit set of code points, every
character an escape, so that the engine's own defaults decide nothing. The
translation goes to RE2 (linear time), or, for what RE2 lacks (lookarounds,
backreferences, ``\\B``, a few Unicode properties), to ``regex``, which backtracks and
so runs with a timeout (see validation.py); what that engine cannot hold (expanded
counted repetitions, deep nesting) is refused. Text that ECMA-262 refuses is refused
here, with the reason, when the manifest loads.

Of ECMA-262's modifiers (2025), ``(?i:...)`` and ``(?-i:...)`` are taken: case-insensitive
matching for a group, as both engines do it (Unicode's simple case folding).

One difference is left: a backreference into a repeated group (``(a\\1?){2}``) sees the
capture of the group's previous iteration, where ECMA-262 clears it at each iteration.
tests/manifest/test_ecma_node.py holds random patterns against node's RegExp.

Leniencies kept from ECMA-262's Annex B (web browsers): an escaped ASCII punctuation
character is that character, a lone ``]`` or ``}`` is literal, and a ``-`` beside a
class escape in a class (``[\\d-z]``) is literal.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import re2
import regex
from jsonschema import FormatChecker
from jsonschema.protocols import Validator

RE2_MAX_MEM = 32 << 20  # bytes of automaton per pattern
MAX_PATTERN_CHARS = 1 << 16
# The backtracking engine: at most this many copies of the pattern's parts once its counted
# repetitions are expanded (~30 MB of compiled pattern), and this much translated text.
MAX_COPIES = 100_000
MAX_TRANSLATED_CHARS = 1 << 20
COST_PER_COPY = 10  # RE2 program steps per part of a pattern (a class: a few UTF-8 ranges)
MAX_CODE_POINT = 0x10FFFF

Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, inclusive code point ranges

DIGIT: Ranges = ((0x30, 0x39),)
WORD: Ranges = ((0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A))
# WhiteSpace and LineTerminator of ECMA-262: TAB, LF, VT, FF, CR, the space separators
# (Unicode's Zs: stable since Unicode 6.0), LS, PS and ZWNBSP.
SPACE: Ranges = ((0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                 (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
                 (0xFEFF, 0xFEFF))
LINE_TERMINATOR: Ranges = ((0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029))
CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}
SYNTAX_CHARACTERS = frozenset("^$\\.*+?()[]{}|/")

# General_Category values and their aliases (Unicode's PropertyValueAliases.txt, which
# ECMA-262 lists): \p{Letter}, \p{L}, \p{gc=L} and \p{General_Category=Letter} are one.
_CATEGORIES = """C Other; Cc Control cntrl; Cf Format; Cn Unassigned; Co Private_Use;
Cs Surrogate; L Letter; LC Cased_Letter; Ll Lowercase_Letter; Lm Modifier_Letter;
Lo Other_Letter; Lt Titlecase_Letter; Lu Uppercase_Letter; M Mark Combining_Mark;
Mc Spacing_Mark; Me Enclosing_Mark; Mn Nonspacing_Mark; N Number; Nd Decimal_Number digit;
Nl Letter_Number; No Other_Number; P Punctuation punct; Pc Connector_Punctuation;
Pd Dash_Punctuation; Pe Close_Punctuation; Pf Final_Punctuation; Pi Initial_Punctuation;
Po Other_Punctuation; Ps Open_Punctuation; S Symbol; Sc Currency_Symbol; Sk Modifier_Symbol;
Sm Math_Symbol; So Other_Symbol; Z Separator; Zl Line_Separator; Zp Paragraph_Separator;
Zs Space_Separator"""
CATEGORY = {alias: names.split()[0] for names in _CATEGORIES.split(";")
            for alias in names.split()}
_RE2_LACKS = frozenset({"C", "LC", "Cn"})  # RE2's C has no Cn in it
_SCRIPT = re.compile(r"[A-Z][a-z]+(_[A-Z][a-z]+)*\Z")  # Greek, Old_Italic, Grek: as spelt
# ECMA-262's binary properties (table "Binary Unicode property aliases"), spelt as it has them
BINARY_PROPERTIES = frozenset("""ASCII ASCII_Hex_Digit AHex Alphabetic Alpha Any Assigned
Bidi_Control Bidi_C Bidi_Mirrored Bidi_M Case_Ignorable CI Cased Changes_When_Casefolded CWCF
Changes_When_Casemapped CWCM Changes_When_Lowercased CWL Changes_When_NFKC_Casefolded CWKCF
Changes_When_Titlecased CWT Changes_When_Uppercased CWU Dash Default_Ignorable_Code_Point DI
Deprecated Dep Diacritic Dia Emoji Emoji_Component EComp Emoji_Modifier EMod
Emoji_Modifier_Base EBase Emoji_Presentation EPres Extended_Pictographic ExtPict Extender Ext
Grapheme_Base Gr_Base Grapheme_Extend Gr_Ext Hex_Digit Hex IDS_Binary_Operator IDSB
IDS_Trinary_Operator IDST ID_Continue IDC ID_Start IDS Ideographic Ideo Join_Control Join_C
Logical_Order_Exception LOE Lowercase Lower Math Noncharacter_Code_Point NChar Pattern_Syntax
Pat_Syn Pattern_White_Space Pat_WS Quotation_Mark QMark Radical Regional_Indicator RI
Sentence_Terminal STerm Soft_Dotted SD Terminal_Punctuation Term Unified_Ideograph UIdeo
Uppercase Upper Variation_Selector VS White_Space space XID_Continue XIDC XID_Start
XIDS""".split())  # noqa: SIM905 - as the table has them
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")
_HEX = re.compile(r"[0-9a-fA-F]+")
# ECMA-262's IdentifierName, near enough: Unicode letters, digits after the first, _ and $
_GROUP_NAME = re.compile(r"(?:[^\W\d]|\$)(?:\w|\$)*")


class PatternError(ValueError):
    """A pattern that is not an ECMA-262 regular expression (or that no engine here takes)."""


class NeedsBacktracking(Exception):
    """The pattern needs what RE2 lacks: the backtracking engine takes it."""


@functools.lru_cache(maxsize=4096)  # patterns come from loaded schemas: a bounded set
def compiled(pattern: str) -> Any:
    """The compiled form of ``pattern``: an RE2 regexp, or a ``regex`` pattern (whose
    ``search`` must be given a timeout). PatternError when the pattern is not valid."""
    return _compile(pattern)


@functools.lru_cache(maxsize=4096)
def backtracking(pattern: str) -> Any:
    """``pattern`` compiled for ``regex`` alone: for a text RE2 cannot read (RE2 reads UTF-8,
    and a JSON string may hold a lone surrogate, which ECMA-262 matches as a code point)."""
    translator = _Translator(pattern, _Target(backtracking=True))
    text = translator.run()
    # regex expands counted repetitions: (?:(?:a{1000}){1000}){1000} took 3 GB and more
    if translator.copies > MAX_COPIES:
        raise PatternError(f"its counted repetitions make more than {MAX_COPIES} copies of "
                           "its parts (multiply the nested counts)")
    if len(text) > MAX_TRANSLATED_CHARS:  # 32 K of \S compile to 7.6 MB: 7 s
        raise PatternError("too large for the backtracking engine (it needs one for a "
                           "lookaround, a backreference or \\B)")
    try:
        return regex.compile(text)
    except regex.error as exc:
        raise PatternError(exc.msg) from None
    except RecursionError:
        raise PatternError("groups nested too deeply") from None


def check(pattern: object) -> bool:
    """Whether ``pattern`` is an ECMA-262 regular expression (PatternError says why not):
    the ``regex`` format, for a FormatChecker. Not cached: values are checked this way too."""
    if isinstance(pattern, str):
        _compile(pattern)
    return True


def _compile(pattern: str) -> Any:
    if len(pattern) > MAX_PATTERN_CHARS:  # the largest compile in ~1 s (64 K of \\S)
        raise PatternError(f"longer than {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = RE2_MAX_MEM
    try:
        return re2.compile(translate(pattern, backtracking=False), options)
    except (NeedsBacktracking, re2.error):  # a repetition over 1000 or a huge automaton, too
        pass
    return backtracking.__wrapped__(pattern)


def cost(pattern: str) -> int:
    """The steps per character of text a linear-time engine may take on ``pattern`` at worst:
    the size of its RE2 program (for one RE2 lacks features for, its expanded size)."""
    try:
        compiled_pattern = compiled(pattern)
    except PatternError:  # refused when its schema loads
        return 0
    if isinstance(compiled_pattern, re2._Regexp):
        return int(compiled_pattern.programsize)
    _, copies = _facts(pattern)
    return COST_PER_COPY * max(copies, 1)


def asserts_word_boundaries(pattern: str) -> bool:
    """Whether ``pattern`` has ``\\b`` or ``\\B`` (jsonschema-rs reads them with Unicode's
    word characters, ECMA-262 with ASCII's: ``\\bé`` matches ``é`` there, not here)."""
    return _facts(pattern)[0]


@functools.lru_cache(maxsize=4096)
def _facts(pattern: str) -> tuple[bool, int]:
    """Whether ``pattern`` asserts word boundaries (True when it is no pattern), and how
    many copies of its parts its counted repetitions make: one reading, once."""
    translator = _Translator(pattern, _Target(backtracking=True))
    try:
        translator.run()
    except PatternError:
        return True, 0
    return translator.boundaries, translator.copies


def format_checker(dialect: type[Validator]) -> FormatChecker:
    """The dialect's format checker, with ``regex`` read as ECMA-262 (not as Python's re):
    for a schema's own keywords, whose patterns are compiled once (:func:`compiled`)."""
    checker = FormatChecker(())
    checker.checkers = {**dialect.FORMAT_CHECKER.checkers,
                        "regex": (_compiles, PatternError)}
    return checker


def _compiles(pattern: object) -> bool:
    if isinstance(pattern, str):
        compiled(pattern)
    return True


def translate(pattern: str, *, backtracking: bool) -> str:
    """``pattern`` for RE2, or for ``regex`` when ``backtracking``: the same matches."""
    return _Translator(pattern, _Target(backtracking)).run()


@dataclass(frozen=True)
class _Target:
    """How each construct is written for one engine."""

    backtracking: bool

    def char(self, code: int) -> str:
        if code < 0x80 and chr(code).isalnum():
            return chr(code)
        return f"\\U{code:08x}" if self.backtracking else f"\\x{{{code:x}}}"

    def ranges(self, ranges: Ranges) -> str:
        return "".join(self.char(lo) if lo == hi else f"{self.char(lo)}-{self.char(hi)}"
                       for lo, hi in ranges)

    def end(self) -> str:
        return r"\Z" if self.backtracking else "$"  # RE2's $ is the end of the text

    def boundary(self, negated: bool) -> str:
        if not self.backtracking:
            if negated:  # RE2 matches bytes: its \B holds inside a character's UTF-8 bytes
                raise NeedsBacktracking
            return r"\b"  # RE2's \b is ASCII, like ECMA-262's
        word = f"[{self.ranges(WORD)}]"
        at = f"(?<={word})(?!{word})|(?<!{word})(?={word})"
        return f"(?!{at})" if negated else f"(?:{at})"

    def property(self, body: str, negated: bool) -> str:
        """``\\p{body}`` (``\\P`` when negated)."""
        name, _, value = body.partition("=")
        letter = "P" if negated else "p"
        if not value:
            if name in CATEGORY:
                return self._category(CATEGORY[name], letter)
            if name not in BINARY_PROPERTIES:
                raise PatternError(f"unknown property \\p{{{body}}}")
            if not self.backtracking:  # a binary property (ASCII, Alphabetic...): regex's
                raise NeedsBacktracking
            return f"\\{letter}{{{name}}}"
        if name in ("General_Category", "gc") and value in CATEGORY:
            return self._category(CATEGORY[value], letter)
        if name in ("Script", "sc", "Script_Extensions", "scx") and _SCRIPT.match(value):
            if self.backtracking:
                return f"\\{letter}{{{name}={value}}}"
            if name in ("Script", "sc") and value not in CATEGORY:
                return f"\\{letter}{{{value}}}"  # RE2 knows scripts by their long names
            raise NeedsBacktracking
        raise PatternError(f"bad property \\p{{{body}}}")

    def _category(self, category: str, letter: str) -> str:
        if self.backtracking:
            return f"\\{letter}{{gc={category}}}"
        if category in _RE2_LACKS:
            raise NeedsBacktracking
        return f"\\{letter}{{{category}}}"


@dataclass
class _Set:
    """A class's contents: code point ranges and Unicode properties (engine syntax)."""

    ranges: list[tuple[int, int]]
    properties: list[str]


def _complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return tuple(out)


_CLASS_ESCAPES = {"d": DIGIT, "D": _complement(DIGIT), "w": WORD, "W": _complement(WORD),
                  "s": SPACE, "S": _complement(SPACE)}


class _Translator:
    """One pass over the pattern, writing the target's text as it goes."""

    def __init__(self, pattern: str, target: _Target) -> None:
        self.text = pattern
        self.at = 0
        self.target = target
        self.out: list[str] = []
        self.groups = 0
        self.names: set[str] = set()
        self.backreferences: list[int] = []
        self.named_references: list[str] = []
        self.boundaries = False
        self.last = "start"  # what the previous term was: start, atom, assertion, quantifier...
        self.opened: list[str] = []  # per open group: what it is once closed (atom, assertion)
        # Copies of the pattern's parts once counted repetitions are expanded: per open
        # group (and the whole pattern, first) the sum so far, and the last term's share.
        self.sums = [0]
        self.last_copies = 0

    def run(self) -> str:
        while self.at < len(self.text):
            self._term()
        if any(n > self.groups for n in self.backreferences):
            raise PatternError("a backreference names a group the pattern does not have")
        if any(name not in self.names for name in self.named_references):
            raise PatternError("\\k<name> names a group the pattern does not have")
        return "".join(self.out)

    def _fail(self, why: str) -> PatternError:
        return PatternError(f"{why} (at character {self.at})")

    def _term(self) -> None:
        c = self.text[self.at]
        self.at += 1
        if c in "*+?{":
            self.out.append(self._repeat(c))
            return
        kind = "atom"
        self.last_copies = 1
        if c == "\\":
            kind = "assertion" if self.text.startswith(("b", "B"), self.at) else "atom"
            self.out.append(self._escape())
        elif c == "[":
            self.out.append(self._class())
        elif c == ".":
            self.out.append(self._set_text(_Set(list(_complement(LINE_TERMINATOR)), []), False))
        elif c in "^$":
            kind = "assertion"
            self.out.append("^" if c == "^" else self.target.end())
        elif c == "(":
            opener = self._group()
            self.opened.append("assertion" if opener[2:3] in ("=", "!", "<") else "atom")
            kind = "start"
            self.sums.append(0)
            self.out.append(opener)
        elif c == "|":
            kind = "start"
            self.out.append(c)
        elif c == ")":
            kind = self.opened.pop() if self.opened else "atom"  # unbalanced: the engine says so
            self.last_copies = self.sums.pop() if len(self.sums) > 1 else 0
            self.out.append(c)
        else:  # a lone ] or }, like any other character, is itself
            self.out.append(self.target.char(ord(c)))
        self.last = kind
        if kind == "start":
            self.last_copies = 0
        self.sums[-1] += self.last_copies

    def _repeat(self, c: str) -> str:
        """A quantifier, or the ``?`` that makes one lazy: only an atom or a group repeats."""
        text = c
        if c == "{":
            match = _QUANTIFIER.match(self.text, self.at - 1)
            if match is None:
                raise self._fail("a '{' that starts no {n}, {n,} or {n,m} must be escaped: \\{")
            self.at = match.end()
            text = match.group()
        if c == "?" and self.last == "quantifier":
            self.last = "lazy"
            return text
        if self.last != "atom":
            why = "an assertion cannot be repeated" if self.last == "assertion" else \
                "it follows no atom"
            raise self._fail(f"nothing to repeat: {why}")
        self.last = "quantifier"
        if c == "{":
            count = max(int(n) for n in re.findall(r"\d+", text))
            self.sums[-1] += self.last_copies * (count - 1)
            self.last_copies *= count
        return text

    @property
    def copies(self) -> int:
        """Copies of the pattern's parts once its counted repetitions are expanded."""
        return sum(self.sums)

    def _group(self) -> str:
        if not self.text.startswith("?", self.at):
            self.groups += 1
            return "("
        for opener in ("?:", "?i:", "?-i:", "?=", "?!", "?<=", "?<!"):
            if self.text.startswith(opener, self.at):
                self.at += len(opener)
                if opener[1] in "=!<" and not self.target.backtracking:
                    raise NeedsBacktracking  # a lookaround
                return "(" + opener
        if self.text.startswith("?<", self.at):
            match = _GROUP_NAME.match(self.text, self.at + 2)
            if match is None or not self.text.startswith(">", match.end()):
                raise self._fail("a group name must be an identifier: (?<name>...)")
            if match.group() in self.names:
                raise self._fail(f"two groups are named {match.group()!r}")
            self.names.add(match.group())
            self.groups += 1
            self.at = match.end() + 1
            return f"(?P<{_engine_name(match.group())}>"
        raise self._fail("'(?' starts no ECMA-262 group: (?:...), (?i:...), (?<name>...), "
                         "a lookaround; no (?i) for the rest of the pattern, no (?P...)")

    def _escape(self) -> str:
        if self.at >= len(self.text):
            raise self._fail("the pattern ends with a lone backslash")
        c = self.text[self.at]
        if c in _CLASS_ESCAPES:
            self.at += 1
            return self._set_text(_Set(list(_CLASS_ESCAPES[c]), []), False)
        if c in "bB":
            self.at += 1
            self.boundaries = True
            return self.target.boundary(c == "B")
        if c in "pP":
            self.at += 1
            return self._set_text(_Set([], [self._property(c == "P")]), False)
        if c in "123456789":
            return self._backreference()
        if c == "k":
            return self._named_reference()
        return self.target.char(self._character_escape(in_class=False))

    def _backreference(self) -> str:
        match = re.compile(r"\d+").match(self.text, self.at)
        assert match is not None
        self.at = match.end()
        if not self.target.backtracking:
            raise NeedsBacktracking
        self.backreferences.append(int(match.group()))
        return _reference(str(int(match.group())))

    def _named_reference(self) -> str:
        match = _GROUP_NAME.match(self.text, self.at + 2)
        if not self.text.startswith("k<", self.at) or match is None \
                or not self.text.startswith(">", match.end()):
            raise self._fail("\\k must name a group: \\k<name>")
        self.at = match.end() + 1
        if not self.target.backtracking:
            raise NeedsBacktracking
        self.named_references.append(match.group())
        return _reference(_engine_name(match.group()))

    def _property(self, negated: bool) -> str:
        end = self.text.find("}", self.at)
        if not self.text.startswith("{", self.at) or end < 0:
            raise self._fail("\\p and \\P take a property in braces: \\p{Letter}")
        body = self.text[self.at + 1:end]
        self.at = end + 1
        return self.target.property(body, negated)

    def _character_escape(self, in_class: bool) -> int:
        """The code point of the escape at ``self.at`` (after its backslash)."""
        c = self.text[self.at]
        self.at += 1
        if c in CONTROL_ESCAPES:
            return CONTROL_ESCAPES[c]
        if c == "c":
            letter = self.text[self.at:self.at + 1]
            if not (letter.isascii() and letter.isalpha()):
                raise self._fail("\\c must be followed by a letter: \\cJ")
            self.at += 1
            return ord(letter) % 32
        if c == "0" and not self.text[self.at:self.at + 1].isdigit():
            return 0
        if c == "x":
            return self._hex(2)
        if c == "u":
            return self._unicode_escape()
        if in_class and c == "b":
            return 0x08
        if c.isascii() and not c.isalnum() and c.isprintable():
            return ord(c)  # \. \/ \- and the like: the character itself
        raise self._fail(f"\\{c} is not an escape of ECMA-262 regular expressions")

    def _hex(self, digits: int) -> int:
        chunk = self.text[self.at:self.at + digits]
        if len(chunk) != digits or not _HEX.fullmatch(chunk):
            raise self._fail(f"expected {digits} hex digits")
        self.at += digits
        return int(chunk, 16)

    def _unicode_escape(self) -> int:
        if self.text.startswith("{", self.at):
            end = self.text.find("}", self.at)
            chunk = self.text[self.at + 1:end] if end > 0 else ""
            if not _HEX.fullmatch(chunk) or int(chunk, 16) > MAX_CODE_POINT:
                raise self._fail("\\u{...} takes a code point in hex, at most 10FFFF")
            self.at = end + 1
            return int(chunk, 16)
        code = self._hex(4)
        low_text = self.text[self.at + 2:self.at + 6]
        if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", self.at) \
                and _HEX.fullmatch(low_text) and 0xDC00 <= int(low_text, 16) < 0xE000:
            self.at += 6  # a surrogate pair, both halves \uXXXX: one code point
            return 0x10000 + ((code - 0xD800) << 10) + (int(low_text, 16) - 0xDC00)
        return code  # (a lone surrogate; \u{...} after it is a code point of its own)

    # --- character classes ---

    def _class(self) -> str:
        negated = self.text.startswith("^", self.at)
        self.at += negated
        items = _Set([], [])
        while True:
            if self.at >= len(self.text):
                raise self._fail("a character class is not closed: ]")
            if self.text[self.at] == "]":
                self.at += 1
                return self._set_text(items, negated)
            low = self._class_atom(items)
            if low is None or not self.text.startswith("-", self.at) \
                    or self.text.startswith("-]", self.at) or self.at + 1 == len(self.text):
                if low is not None:
                    items.ranges.append((low, low))
                continue
            self.at += 1
            high = self._class_atom(items)
            if high is None:  # [a-\d]: the '-' is itself (Annex B)
                items.ranges += [(low, low), (0x2D, 0x2D)]
            elif low > high:
                raise self._fail("a class range is out of order")
            else:
                items.ranges.append((low, high))

    def _class_atom(self, items: _Set) -> int | None:
        """The next atom's code point; None when it is a set (added to ``items`` then)."""
        c = self.text[self.at]
        self.at += 1
        if c != "\\":
            return ord(c)
        if self.at >= len(self.text):
            raise self._fail("the pattern ends with a lone backslash")
        e = self.text[self.at]
        if e in _CLASS_ESCAPES:
            self.at += 1
            items.ranges.extend(_CLASS_ESCAPES[e])
            return None
        if e in "pP":
            self.at += 1
            items.properties.append(self._property(e == "P"))
            return None
        return self._character_escape(in_class=True)

    def _set_text(self, items: _Set, negated: bool) -> str:
        ranges, properties = _merged(items.ranges), items.properties
        if any(p.replace("\\p", "\\P", 1) in properties for p in properties
               if p.startswith("\\p")):
            ranges, properties = ((0, MAX_CODE_POINT),), []  # regex: [^\p{L}\P{L}] took all
        elif not ranges and not properties:  # [] matches nothing, [^] anything
            negated = not negated
            ranges = ((0, MAX_CODE_POINT),)
        body = self.target.ranges(ranges) + "".join(properties)
        return f"[{'^' if negated else ''}{body}]"


def _reference(group: str) -> str:
    """A backreference: a group that took no part in the match matches the empty string."""
    return f"(?({group})\\g<{group}>|)"


def _engine_name(name: str) -> str:
    """A group name both engines take (ECMA-262's may hold a '$'), unique per name."""
    return "n" + name.encode().hex()


def _merged(ranges: list[tuple[int, int]]) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return tuple(out)
