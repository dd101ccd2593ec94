"""Admin template tags: a date hierarchy that stays fast on 100,000 tasks."""

from __future__ import annotations

import copy
import datetime as dt

from django import template
from django.contrib.admin.templatetags.admin_list import date_hierarchy
from django.db.models import Max
from django.utils import timezone

register = template.Library()


@register.inclusion_tag("admin/date_hierarchy.html")
def fast_date_hierarchy(cl):
    """Django's own date hierarchy, fed every period between the first and last date
    (two indexed MIN/MAX lookups) instead of a SELECT DISTINCT that, on SQLite, calls a
    Python function per row (~0.4 s at 100,000 tasks). A period may list no tasks."""
    cheap = copy.copy(cl)
    cheap.queryset = PeriodsBetween(cl.queryset)
    return date_hierarchy(cheap)


class PeriodsBetween:
    """Stands in for the changelist's queryset inside `date_hierarchy`."""

    def __init__(self, queryset):
        self.queryset = queryset

    def aggregate(self, **exprs) -> dict:
        """Only Min/Max of a field, as `date_hierarchy` asks; one ORDER BY ... LIMIT 1 each,
        because SQLite answers MIN and MAX from an index only one per query."""
        return {name: self.edge(expr.source_expressions[0].name, isinstance(expr, Max))
                for name, expr in exprs.items()}

    def edge(self, field_name: str, last: bool):
        ordered = self.queryset.order_by(f"-{field_name}" if last else field_name)
        return ordered.values_list(field_name, flat=True).first()

    def datetimes(self, field_name: str, kind: str) -> list[dt.datetime]:
        first, last = self.edge(field_name, False), self.edge(field_name, True)
        if first is None:
            return []
        return list(periods(timezone.localtime(first), timezone.localtime(last), kind))

    dates = datetimes


def periods(first: dt.datetime, last: dt.datetime, kind: str):
    """The start of every year, month or day from `first` to `last`, inclusive."""
    if kind == "year":
        yield from (first.replace(year=y, month=1, day=1) for y in range(first.year, last.year + 1))
    elif kind == "month":
        y, m = first.year, first.month
        while (y, m) <= (last.year, last.month):
            yield first.replace(year=y, month=m, day=1)
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    else:
        day = first.date()
        while day <= last.date():
            yield first.replace(year=day.year, month=day.month, day=day.day)
            day += dt.timedelta(days=1)
