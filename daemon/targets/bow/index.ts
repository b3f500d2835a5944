export { bowTarget, BowTarget, type BowState } from "./bow.js";
