"""Execute every notebook in this directory headless (nbclient) against the results under
$DISTILL_SIM_RESULTS (default: the committed results/samples). Executed copies go to a
temporary directory; the notebooks in the repository are not modified. Exit status 1 names
the notebook and cell that failed."""

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

here = Path(__file__).resolve().parent
failed = []
notebooks = sorted(here.glob("*.ipynb"))
with tempfile.TemporaryDirectory() as out:
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=300, kernel_name="distill-sim", resources={"metadata": {"path": str(here)}})
        try:
            client.execute()
            nbformat.write(nb, Path(out) / path.name)
            print(f"ok      {path.name}")
        except CellExecutionError as e:
            failed.append(path.name)
            print(f"FAILED  {path.name}\n{e}", file=sys.stderr)
if not notebooks:
    print("no notebooks found", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if failed else 0)
