"""Segment's warehouse rules as Segment documents them, as test fixtures.

Each case cites where the rule is written: a page of the segmentio/segment-docs repository
(``src/connections/storage/...``) and its section, or go-snakecase's own tests (the package
schema.md names for CamelCase -> snake_case). The tests check the destination against these
cases, so a change of ours that strays from Segment's documented schema fails here. Where our
PostgreSQL differs on purpose (exact JSON for arrays), the case says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA = "src/connections/storage/warehouses/schema.md"
REDSHIFT = "src/connections/storage/catalog/redshift/index.md"
LAKES = "src/connections/storage/data-lakes/comparison.md"
SNAKE = "segmentio/go-snakecase snake_test.go (schema.md: 'All schemas convert collection and property names from CamelCase to snake_case using the go-snakecase package')"  # noqa: E501

# go-snakecase's test samples: input, output.
SNAKECASE = [
    ("@49L0S145_¬fwHƒ0TSLNVp", "49l0s145_fw_h_0tslnvp"),
    ("lk0B@bFmjrLQ_Z6YL", "lk0_b_b_fmjr_lq_z6yl"),
    ("samPLE text", "sam_ple_text"),
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("CStringRef", "cstring_ref"),
    ("5test", "5test"),
    ("test5", "test5"),
    ("THE5r", "the5r"),
    ("5TEst", "5test"),
    ("_5TEst", "5test"),
    ("@%#&5TEst", "5test"),
    ("edf_6N", "edf_6n"),
    ("f_pX9", "f_p_x9"),
    ("p_z9Rg", "p_z9_rg"),
    ("2FA Enabled", "2fa_enabled"),
    ("Enabled 2FA", "enabled_2fa"),
]


@dataclass
class Case:
    """One documented rule: a call, the table it lands in, and what that row must hold."""

    source: str
    section: str
    call: str  # track, page, screen, identify, group, alias
    fields: dict[str, Any]  # event / name / properties / traits / groupId / previousId
    table: str
    has: dict[str, Any] = field(default_factory=dict)  # column -> value in that row
    lacks: tuple[str, ...] = ()  # columns the row must not have
    context: dict[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()  # columns the table must have (any value)

    @property
    def id(self) -> str:
        return f"{self.source.rsplit('/', 2)[-2]}: {self.section}"


CASES = [
    Case(
        SCHEMA,
        "Schema objects > Context",
        "track",
        {"event": "App Opened"},
        "app_opened",
        context={"app": {"version": "1.0.0"}},
        has={"context_app_version": "1.0.0"},
    ),
    Case(
        SCHEMA,
        "Schema objects > Traits",
        "identify",
        {"traits": {"address": {"street": "6th Street"}}},
        "identifies",
        has={"address_street": "6th Street"},
    ),
    Case(
        SCHEMA,
        "Schema objects > Properties",
        "track",
        {"event": "Product Viewed", "properties": {"product_id": {"sku": "G-32"}}},
        "product_viewed",
        has={"product_id_sku": "G-32"},
    ),
    # The page shows the value as "[507f1, 505bd]"; we store the array as exact JSON text.
    Case(
        SCHEMA,
        "Schema objects > Array (String)",
        "track",
        {"event": "Products Compared", "properties": {"product_id": ["507f1", "505bd"]}},
        "products_compared",
        has={"product_id": '["507f1","505bd"]'},
    ),
    Case(
        SCHEMA,
        "How warehouse tables handle nested objects and arrays (context.field.nestedA.nestedB)",
        "page",
        {"name": "Home"},
        "pages",
        context={"field": {"nestedA": {"nestedB": "x"}}, "list": [1, 2]},
        has={"context_field_nested_a_nested_b": "x", "context_list": "[1,2]"},
    ),
    Case(
        SCHEMA,
        "Tracks vs. Events Tables (analytics.track('Register', ...))",
        "track",
        {"event": "Register", "properties": {"plan": "Pro Annual", "accountType": "Facebook"}},
        "register",
        has={
            "plan": "Pro Annual",
            "account_type": "Facebook",
            "event": "register",
            "event_text": "Register",
        },
    ),
    Case(
        SCHEMA,
        "Tracks vs. Events Tables > Note (properties named like reserved columns are discarded)",
        "track",
        {"event": "Signed Up", "properties": {"user_id": "someone-else", "plan": "free"}},
        "signed_up",
        has={"user_id": "u-1", "plan": "free"},
    ),
    Case(
        SCHEMA,
        "Tracks table (standard columns, no properties)",
        "track",
        {"event": "Signed Up", "properties": {"plan": "free"}},
        "tracks",
        has={"event": "signed_up", "event_text": "Signed Up", "user_id": "u-1"},
        lacks=("plan",),
        columns=("anonymous_id", "context_library_name", "id", "received_at", "sent_at"),
    ),
    Case(
        SCHEMA,
        "Identifies table",
        "identify",
        {"traits": {"email": "ada@example.com", "first_name": "Ada"}},
        "identifies",
        has={"email": "ada@example.com", "first_name": "Ada", "user_id": "u-1"},
        columns=("anonymous_id", "context_library_name", "id", "received_at", "sent_at"),
    ),
    Case(
        SCHEMA,
        "Warehouse tables > users (id is the user_id; no anonymous_id)",
        "identify",
        {"traits": {"email": "ada@example.com"}},
        "users",
        has={"id": "u-1", "email": "ada@example.com"},
        lacks=("anonymous_id", "user_id"),
    ),
    Case(
        SCHEMA,
        "Groups table",
        "group",
        {"groupId": "g-1", "traits": {"name": "Initech", "employee_count": 20}},
        "groups",
        has={"group_id": "g-1", "name": "Initech", "employee_count": 20},
    ),
    Case(
        SCHEMA,
        "Warehouse tables > accounts (the latest state of a group)",
        "group",
        {"groupId": "g-1", "traits": {"name": "Initech"}},
        "accounts",
        has={"id": "g-1", "name": "Initech"},
    ),
    Case(
        SCHEMA,
        "Pages and Screens tables (properties as columns)",
        "page",
        {"name": "Pricing", "properties": {"referrer": "https://example.com/", "title": "Plans"}},
        "pages",
        has={"name": "Pricing", "referrer": "https://example.com/", "title": "Plans"},
    ),
    Case(
        SCHEMA,
        "Pages and Screens tables (screens)",
        "screen",
        {"name": "Settings", "properties": {"title": "Settings"}},
        "screens",
        has={"name": "Settings", "title": "Settings"},
    ),
    Case(
        SCHEMA,
        "Warehouse tables > aliases",
        "alias",
        {"previousId": "anon-9"},
        "aliases",
        has={"previous_id": "anon-9", "user_id": "u-1"},
    ),
    Case(
        SCHEMA,
        "Timestamps; uuid, uuid_ts (every table has the four timestamps and uuid_ts)",
        "screen",
        {"name": "Home"},
        "screens",
        columns=("timestamp", "original_timestamp", "sent_at", "received_at", "uuid_ts"),
    ),
    Case(
        SCHEMA,
        "Warehouse column creation (a column only for a non-null value)",
        "track",
        {"event": "Signed Up", "properties": {"coupon": None, "plan": "free"}},
        "signed_up",
        lacks=("coupon",),
        has={"plan": "free"},
    ),
    Case(
        REDSHIFT,
        "Reserved Words (an underscore before a name starting with a digit)",
        "track",
        {"event": "Signed Up", "properties": {"3doctors": "yes"}},
        "signed_up",
        has={"_3doctors": "yes"},
    ),
    Case(
        REDSHIFT,
        "Reserved Words (reserved words are _-prefixed; here PostgreSQL's)",
        "track",
        {"event": "Signed Up", "properties": {"select": 1, "user": "ada", "order": "o-1"}},
        "signed_up",
        has={"_select": 1, "_user": "ada", "_order": "o-1"},
    ),
    Case(
        LAKES,
        "Tables (a table name starting with a digit: _101_account_update)",
        "track",
        {"event": "101 Account Update"},
        "_101_account_update",
        has={"event": "_101_account_update", "event_text": "101 Account Update"},
    ),
    Case(
        LAKES,
        "Columns (no integrations, channel, type, version in warehouses)",
        "track",
        {"event": "Signed Up"},
        "signed_up",
        lacks=("integrations_all", "channel", "type", "version", "message_id"),
    ),
]

# schema.md, "Schema evolution and compatibility > New columns": a new column takes the
# type of the most recent occurrence in the batch. ("Data Types": timestamp, integer, float,
# boolean, varchar; our integer and float are both exact numeric.)
NEW_COLUMN_TYPE = (SCHEMA, "Schema evolution and compatibility > New columns")
DATA_TYPES = {
    "text": ("hello", "text"),
    "count": (3, "numeric"),
    "ratio": ("0.25", "text"),
    "price": (2.5, "numeric"),
    "active": (True, "boolean"),
    "seen_at": ("2024-05-01T10:00:00Z", "timestamp with time zone"),
}
# data-lakes/comparison.md, "Data types": "attempt a best effort conversion to cast the
# fields to the target data type. Fields that cannot be casted may be dropped."
BEST_EFFORT = (LAKES, "Schema > Data types")
