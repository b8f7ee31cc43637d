"""Print the README's settings table from bridge/settings.py (keeps the two in step)."""

from bridge.settings import ENV_PREFIX, Settings


def main() -> None:
    print("| flag | environment | default | meaning |")
    print("|---|---|---|---|")
    for name, field in Settings.model_fields.items():
        if name in ("rules", "sources"):
            continue
        default = field.get_default(call_default_factory=True)
        shown = "-" if default is None else f"`{default}`"
        flag = "--" + name.replace("_", "-")
        print(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")


if __name__ == "__main__":
    main()
