// Compile a Solidity standard-JSON input (stdin) with the pinned solc package and print the
// standard-JSON output (stdout), preceded by nothing else; ledger/compile.py drives this.
"use strict";
const solc = require("solc");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const output = JSON.parse(solc.compile(input));
  output.qdspaceCompilerVersion = solc.version();
  process.stdout.write(JSON.stringify(output));
});
