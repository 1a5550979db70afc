def main() -> None:
    raise SystemExit("the CLI is not built yet")
