/**
 * Registers the built-in target types. Each import below adds one target; keep them in this one place.
 */
import { registerTargetType } from "./index.js";
import { linearTarget } from "./linear.js";
import { zeroTarget } from "./zero.js";
import { errorTarget } from "./error.js";
import { logWritesTarget } from "./log-writes/index.js";
import { stripedTarget } from "./striped.js";
import { flakeyTarget } from "./flakey.js";
import { delayTarget } from "./delay.js";
import { bowTarget } from "./bow/index.js";
import { eraTarget } from "./era/index.js";

let registered = false;
export function registerBuiltinTargets(): void {
  if (registered) return;
  registered = true;
  for (const t of [linearTarget, zeroTarget, errorTarget, logWritesTarget, stripedTarget, flakeyTarget, delayTarget, bowTarget, eraTarget]) registerTargetType(t);
}
